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
	if len(s) <= MaxNackDetail {
		return strings.ToValidUTF8(s, "\uFFFD")
	}
	// Only what is kept is looked at: a detail may be megabytes long.
	note := func(n int) string { return " … (" + strconv.Itoa(n) + " bytes cut)" }
	keep := MaxNackDetail - len(note(len(s)))
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	kept := strings.ToValidUTF8(s[:keep], "\uFFFD")
	for len(kept)+len(note(len(s)-keep)) > MaxNackDetail {
		// Replacement characters (3 bytes) stand for invalid bytes
		// (1 each): keep fewer.
		keep -= len(kept) + len(note(len(s)-keep)) - MaxNackDetail
		for keep > 0 && !utf8.RuneStart(s[keep]) {
			keep--
		}
		kept = strings.ToValidUTF8(s[:keep], "\uFFFD")
	}
	return kept + note(len(s)-keep)
}
