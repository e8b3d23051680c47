package components

import (
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

func outMsgSeq(seq uint64) *outMsg {
	return &outMsg{msg: &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Seq: seq}}}
}

// TestOutQueue_StandingBacklog checks that a queue which never empties, with
// a backlog of 100 over a million pushes and pops, keeps its backing array
// bounded and its order intact.
func TestOutQueue_StandingBacklog(t *testing.T) {
	const (
		backlog = 100
		total   = 1_000_000
	)
	var q outQueue
	var pushed, popped uint64
	for range backlog {
		pushed++
		q.pushBack(outMsgSeq(pushed))
	}
	maxCap := 0
	for range total {
		pushed++
		q.pushBack(outMsgSeq(pushed))
		m := q.popFront()
		popped++
		if got := m.msg.GetId().GetSeq(); got != popped {
			t.Fatalf("popFront() = seq %d, want %d", got, popped)
		}
		maxCap = max(maxCap, cap(q.items))
	}
	if got := q.len(); got != backlog {
		t.Errorf("len() = %d, want %d", got, backlog)
	}
	if maxCap >= 10000 {
		t.Errorf("cap(items) reached %d over %d pushes with a backlog of %d, want < 10000", maxCap, total, backlog)
	}
}

// TestOutQueue_PushFrontAfterCompaction checks that messages taken back go
// before everything queued, in their order, once the queue has compacted.
func TestOutQueue_PushFrontAfterCompaction(t *testing.T) {
	var q outQueue
	for seq := uint64(1); seq <= 3000; seq++ {
		q.pushBack(outMsgSeq(seq))
	}
	for range 2000 {
		q.popFront()
	}
	if q.head > compactAfter {
		t.Fatalf("head = %d after 2000 pops of 3000, want compacted to <= %d", q.head, compactAfter)
	}
	q.pushFront([]*outMsg{outMsgSeq(10001), outMsgSeq(10002)})
	want := []uint64{10001, 10002}
	for seq := uint64(2001); seq <= 3000; seq++ {
		want = append(want, seq)
	}
	if got := q.len(); got != len(want) {
		t.Fatalf("len() = %d, want %d", got, len(want))
	}
	for i, w := range want {
		if got := q.popFront().msg.GetId().GetSeq(); got != w {
			t.Fatalf("popFront() #%d = seq %d, want %d", i+1, got, w)
		}
	}
	if q.len() != 0 || q.head != 0 || len(q.items) != 0 {
		t.Errorf("emptied queue: len %d, head %d, items %d, want 0, 0, 0", q.len(), q.head, len(q.items))
	}
}
