package butterfly

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxNackDetail is the most bytes of a Nack's detail that Butterfly's
// components send. A handler's or processor's error becomes the detail of
// the message it hands back, and an error may quote anything (a whole
// payload): a longer detail is cut, so that the frame that carries it stays
// within its receiver's limit. A frame over that limit ends the stream, and
// the message would be sent and handed back again without end.
const MaxNackDetail = 4096

// NackDetail returns s as a Nack's detail: valid UTF-8 (a proto3 string
// must be), and cut to at most MaxNackDetail bytes at a character boundary,
// saying how many bytes were cut.
func NackDetail(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= MaxNackDetail {
		return s
	}
	cut := len(s)
	note := func(n int) string { return " … (" + strconv.Itoa(n) + " bytes cut)" }
	keep := MaxNackDetail - len(note(cut))
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return s[:keep] + note(cut-keep)
}
