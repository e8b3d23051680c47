package butterfly

import (
	"errors"
	"strings"
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestCheckMessageID checks each rule of CheckMessageID: the error
// errors.Is ErrInvalidMessageID and its text is the rule alone, for the
// producer and the intermediate to put after their own words.
func TestCheckMessageID(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   *messagev1.MessageId
		lwm  uint64
		want string // "" for none
	}{
		{"ok", &messagev1.MessageId{ProducerId: "p1", Incarnation: 1, Seq: 1}, 1, ""},
		{"ok without a mark", &messagev1.MessageId{ProducerId: "p1", Incarnation: 1, Seq: MaxSeqSpan}, 0, ""},
		{"ok at 256 bytes", &messagev1.MessageId{ProducerId: strings.Repeat("p", MaxProducerIDBytes), Incarnation: 1, Seq: 1}, 0, ""},
		{"nil", nil, 0, "message has no id"},
		{"seq 0", &messagev1.MessageId{ProducerId: "p1", Incarnation: 1}, 0, "message id has seq 0"},
		{"incarnation 0", &messagev1.MessageId{ProducerId: "p1", Seq: 1}, 0, "message id has incarnation 0 (it must be new at every producer start)"},
		{"empty producer", &messagev1.MessageId{Incarnation: 1, Seq: 1}, 0, "producer_id is empty"},
		{"257 bytes", &messagev1.MessageId{ProducerId: strings.Repeat("p", MaxProducerIDBytes+1), Incarnation: 1, Seq: 1}, 0, "producer_id of 257 bytes is longer than 256"},
		{"not UTF-8", &messagev1.MessageId{ProducerId: "p\xff", Incarnation: 1, Seq: 1}, 0, `producer_id "p\xff" is not valid UTF-8`},
		{"slash", &messagev1.MessageId{ProducerId: "a/b", Incarnation: 1, Seq: 1}, 0, `producer_id "a/b" contains '/'`},
		{"tab", &messagev1.MessageId{ProducerId: "a\tb", Incarnation: 1, Seq: 1}, 0, `producer_id "a\tb" contains '\t'`},
		{"below its mark", &messagev1.MessageId{ProducerId: "p1", Incarnation: 1, Seq: 2}, 3, "seq 2 is below its low_water_seq 3"},
		{"beyond the window", &messagev1.MessageId{ProducerId: "p1", Incarnation: 1, Seq: MaxSeqSpan + 1}, 0, "seq 16777217 is beyond the producer window"},
	} {
		err := CheckMessageID(tc.id, tc.lwm)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: CheckMessageID() = %v, want nil", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidMessageID) || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: CheckMessageID() = %v, want %v starting %q", tc.name, err, ErrInvalidMessageID, tc.want)
		}
	}
}
