package components_test

import (
	"testing"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// TestDelivery_TwoProducersTwoHubsTwoConsumers checks that every message of two
// producers through two intermediates to two consumers is handled exactly
// once.
func TestDelivery_TwoProducersTwoHubsTwoConsumers(t *testing.T) {
	m := newMesh(t)
	n := messageCount(t, 50000)
	i1 := m.startHub("intermediate", "i1", "127.0.0.1")
	i2 := m.startHub("intermediate", "i2", "127.0.0.2")
	m.waitMembers("intermediate", 2)
	led := newLedger()
	c1 := m.consumer("c1", led.handler(), components.WithConcurrency(4))
	c2 := m.consumer("c2", led.handler(), components.WithConcurrency(4))
	waitConsumers(t, 2, i1, i2)
	p1 := m.producer("p1")
	p2 := m.producer("p2")
	led.deliverAll(t, n, p1, p2)
	if got := c1.Stats().Delivered + c2.Stats().Delivered; got != uint64(2*n) {
		t.Errorf("Delivered(c1)+Delivered(c2) = %d, want %d", got, 2*n)
	}
	for _, inst := range []string{"i1", "i2"} {
		if led.instance(inst) == 0 {
			t.Errorf("messages through %s = 0, want > 0", inst)
		}
	}
	for _, p := range []*components.Producer{p1, p2} {
		if st := p.Stats(); st.Sent != uint64(n) || st.Acked != uint64(n) || st.Nacked != 0 || st.InFlight != 0 {
			t.Errorf("Stats(%s) = %+v, want Sent=Acked=%d, Nacked=InFlight=0", p.ID(), st, n)
		}
	}
}

// TestConsumer_CreditAboveMaxCredit checks that a consumer configured with
// more credit than the intermediates' max-credit is not refused but grants
// the max-credit their welcomes state, says so once, and receives every
// message.
func TestConsumer_CreditAboveMaxCredit(t *testing.T) {
	const (
		maxCredit = 8
		n         = 200
	)
	m := newMesh(t)
	i1 := m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithMaxCredit(maxCredit))
	i2 := m.startHub("intermediate", "i2", "127.0.0.2", intermediate.WithMaxCredit(maxCredit))
	m.waitMembers("intermediate", 2)
	led := newLedger()
	var logs logtest.Recorder
	c := m.consumer("c1", led.handler(), components.WithCredit(100), components.WithConcurrency(4), components.WithLogger(logs.Logger()))
	waitConsumers(t, 1, i1, i2)
	p := m.producer("p1")
	led.deliverAll(t, n, p)
	if got := c.Stats().Delivered; got != n {
		t.Errorf("Delivered(c1) = %d, want %d", got, n)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err(c1) = %v, want nil", err)
	}
	if got := logs.Count("credit capped at the intermediate's max_credit"); got != 1 {
		t.Errorf("warnings of the capped credit = %d, want 1", got)
	}
}
