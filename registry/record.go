package registry

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxEpoch is the largest epoch a registration claims. A key whose value
// holds it (or more) cannot be taken over by raising the epoch: Register
// fails, naming the key, instead of wrapping to 0.
const MaxEpoch = 1<<53 - 1

// record is what one kind of registration keeps at its key: how to write it
// and how to read back whose it is.
type record interface {
	// encode returns the value for an epoch and draining state.
	encode(epoch uint64, draining bool) ([]byte, error)
	// decode reads the claim (what else than the epoch tells incarnations
	// apart: an instance's address, a consumer's host and start) and the
	// epoch of a value.
	decode(data []byte) (claim string, epoch uint64, err error)
	// claim is this registration's own claim.
	claim() string
	// epochOf reads the epoch of a value leniently: a value without one, or
	// that is not JSON at all, counts as epoch 0.
	epochOf(data []byte) uint64
}

// instanceRecord is the value of an intermediate instance's service key.
type instanceRecord struct {
	addr string
	meta Metadata // encode fills in Epoch and Draining
}

var _ record = (*instanceRecord)(nil)

func (r *instanceRecord) encode(epoch uint64, draining bool) ([]byte, error) {
	m := r.meta
	m.Epoch = epoch
	m.Draining = draining
	return Value{Addr: r.addr, Metadata: m}.Marshal()
}

func (r *instanceRecord) decode(data []byte) (string, uint64, error) {
	v, err := ParseValue(r.meta.Instance, data)
	if err != nil {
		return "", 0, err
	}
	return v.Addr, v.Metadata.Epoch, nil
}

func (r *instanceRecord) claim() string { return r.addr }

func (r *instanceRecord) epochOf(data []byte) uint64 {
	var v struct {
		Metadata struct {
			Epoch uint64 `json:"epoch"`
		} `json:"Metadata"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return 0
	}
	return v.Metadata.Epoch
}

// consumerRecord is the value of a consumer's registration key.
type consumerRecord struct {
	val ConsumerValue // encode fills in Epoch and Draining
}

var _ record = (*consumerRecord)(nil)

func (r *consumerRecord) encode(epoch uint64, draining bool) ([]byte, error) {
	v := r.val
	v.Epoch = epoch
	v.Draining = draining
	return json.Marshal(v)
}

func (r *consumerRecord) decode(data []byte) (string, uint64, error) {
	v, err := ParseConsumerValue(r.val.Group, r.val.Consumer, data)
	if err != nil {
		return "", 0, err
	}
	return consumerClaim(v), v.Epoch, nil
}

func (r *consumerRecord) claim() string { return consumerClaim(r.val) }

// newConsumerRecord returns the record of val, its host made valid UTF-8 (a
// host name may hold any bytes): JSON would coerce it on the way to etcd,
// and the claim decode reads back from our own value must be ours.
func newConsumerRecord(val ConsumerValue) *consumerRecord {
	val.Host = strings.ToValidUTF8(val.Host, string(utf8.RuneError))
	return &consumerRecord{val: val}
}

// consumerClaim tells a consumer's incarnations apart: its host and when it
// started. A process that comes back after its lease lapsed and finds its
// key held by another incarnation is replaced, whatever that one's epoch
// (which, on a key that was gone, is the store's revision, above its own).
func consumerClaim(v ConsumerValue) string {
	return v.Host + " " + v.Started.UTC().Format(time.RFC3339Nano)
}

func (r *consumerRecord) epochOf(data []byte) uint64 {
	var v struct {
		Epoch uint64 `json:"epoch"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return 0
	}
	return v.Epoch
}

// checkEpoch refuses an epoch above MaxEpoch.
func checkEpoch(epoch uint64) error {
	if epoch > MaxEpoch {
		return fmt.Errorf("epoch %d is over the limit %d", epoch, uint64(MaxEpoch))
	}
	return nil
}
