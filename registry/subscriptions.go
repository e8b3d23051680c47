package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A consumer group of a service is declared by a durable key (no lease):
// "<prefix>/groups/<service>/<group>". Every message an intermediate admits
// while the key exists must be handled by a consumer of the group before the
// message is acknowledged to its producer. A consumer registers under its
// group on a lease, as an intermediate does under its service:
// "<prefix>/consumers/<service>/<group>/<consumer>". Intermediates route over
// these registrations, never over who happens to be connected to them.

// GroupValue is the JSON stored at a group key.
type GroupValue struct {
	// Created is when the group was declared.
	Created time.Time `json:"created"`
	// CreatedBy names who declared it: a consumer id, or "operator".
	CreatedBy string `json:"createdBy,omitempty"`
}

// ConsumerValue is the JSON stored at a consumer's registration key.
type ConsumerValue struct {
	// Consumer is the consumer id; the last element of the key.
	Consumer string `json:"consumer"`
	// Group is the consumer group; the element before the id.
	Group string `json:"group"`
	// Epoch grows with every new incarnation of the consumer id, so that a
	// second process with the same id takes over and the first one stops:
	// one above the key's, or where the key is gone (a lease that lapsed),
	// the store's revision plus one, so that streams a lapsed process still
	// holds are never taken for the new incarnation's.
	Epoch uint64 `json:"epoch"`
	// Draining is set while the consumer leaves: it takes nothing new, and
	// the group's other consumers own its keys.
	Draining bool `json:"draining"`
	// Started is when this incarnation started.
	Started time.Time `json:"started"`
	// Host is the host name of the consumer's process, for operators.
	Host string `json:"host,omitempty"`
	// Version is the software version of the consumer.
	Version string `json:"version,omitempty"`
	// Role is what registered: RoleConsumer or RoleStage, or "" for a value
	// that names none (written by hand, or by a component that did not
	// record it). With mutual TLS an intermediate lets only a client
	// certificate of the role named subscribe under the registration, so a
	// stage and a consumer that share an id cannot take each other's
	// messages; under a value that names none, either may.
	Role string `json:"role,omitempty"`
}

// The roles a consumer registration names (ConsumerValue.Role).
const (
	RoleConsumer = "consumer"
	RoleStage    = "stage"
)

// Group is one group of a service as seen in etcd, with its registered
// consumers.
type Group struct {
	// Name is the group name, taken from the key.
	Name string
	// Declared reports whether the group key exists. Consumers registered
	// under a group that is not declared receive nothing.
	Declared bool
	// Value is the group key's value, when Declared.
	Value GroupValue
	// Consumers are the group's registered consumers, sorted by id.
	Consumers []Consumer
}

// Consumer is one registered consumer as seen in etcd.
type Consumer struct {
	// ID is the consumer id, taken from the key.
	ID string
	// Value is its registration.
	Value ConsumerValue
	// ModRevision is the etcd revision of the key's last change.
	ModRevision int64
	// Lease is the lease the key is on: 0 for a key written without one
	// (by hand: a consumer's registration is always on its lease), which
	// never lapses.
	Lease int64
}

// GroupsPrefix returns "<prefix>/groups/<service>/".
func GroupsPrefix(prefix, service string) string {
	return prefix + "/groups/" + service + "/"
}

// GroupKey returns "<prefix>/groups/<service>/<group>".
func GroupKey(prefix, service, group string) string {
	return GroupsPrefix(prefix, service) + group
}

// ConsumersPrefix returns "<prefix>/consumers/<service>/".
func ConsumersPrefix(prefix, service string) string {
	return prefix + "/consumers/" + service + "/"
}

// ConsumerKey returns "<prefix>/consumers/<service>/<group>/<consumer>".
func ConsumerKey(prefix, service, group, consumer string) string {
	return ConsumersPrefix(prefix, service) + group + "/" + consumer
}

// ParseConsumerValue decodes and checks a consumer key's value; group and
// consumer are taken from the key. An invalid name (see ValidateName), a
// value that names another group or id, one with an epoch over MaxEpoch, or
// one with a role other than RoleConsumer or RoleStage, is rejected.
func ParseConsumerValue(group, consumer string, data []byte) (ConsumerValue, error) {
	if err := errors.Join(ValidateName("group", group), ValidateName("consumer", consumer)); err != nil {
		return ConsumerValue{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	var v ConsumerValue
	if err := json.Unmarshal(data, &v); err != nil {
		return ConsumerValue{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	if v.Consumer != consumer || v.Group != group {
		return ConsumerValue{}, fmt.Errorf("%w: value names consumer %q of group %q, key names %q of %q", ErrInvalidValue, v.Consumer, v.Group, consumer, group)
	}
	if err := checkEpoch(v.Epoch); err != nil {
		return ConsumerValue{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	switch v.Role {
	case "", RoleConsumer, RoleStage:
	default:
		return ConsumerValue{}, fmt.Errorf("%w: role %q is neither %q nor %q", ErrInvalidValue, v.Role, RoleConsumer, RoleStage)
	}
	return v, nil
}

// ParseGroupValue decodes a group key's value. An empty value (a group
// declared with a bare `etcdctl put`) is a group with no details.
func ParseGroupValue(data []byte) (GroupValue, error) {
	var v GroupValue
	if len(strings.TrimSpace(string(data))) == 0 {
		return v, nil
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return GroupValue{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	return v, nil
}

// CreateGroup declares group of service unless it exists, and reports
// whether this call created it. by names the creator in the value.
func CreateGroup(ctx context.Context, cli *clientv3.Client, service, group, by string, opts ...Option) (bool, error) {
	o := newOptions(opts)
	if err := validateNames(o.prefix, service, "group", group); err != nil {
		return false, err
	}
	b, err := json.Marshal(GroupValue{Created: time.Now().UTC(), CreatedBy: by})
	if err != nil {
		return false, fmt.Errorf("registry: encode group value: %w", err)
	}
	key := GroupKey(o.prefix, service, group)
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return false, fmt.Errorf("registry: create group %s: %w", key, err)
	}
	return resp.Succeeded, nil
}

// DeleteGroup deletes the declaration of group of service and reports
// whether it existed. Consumer registrations under it are left to their
// consumers, whose intermediates end their streams.
func DeleteGroup(ctx context.Context, cli *clientv3.Client, service, group string, opts ...Option) (bool, error) {
	o := newOptions(opts)
	if err := validateNames(o.prefix, service, "group", group); err != nil {
		return false, err
	}
	key := GroupKey(o.prefix, service, group)
	resp, err := cli.Delete(ctx, key)
	if err != nil {
		return false, fmt.Errorf("registry: delete group %s: %w", key, err)
	}
	return resp.Deleted > 0, nil
}

// RegisterConsumer registers consumer in group of service, as Register does
// for an instance: on a lease, with an epoch above the key's current one,
// kept until Close; a second registration of the same id replaces the first,
// whose Replaced channel closes. It does not declare the group (see
// CreateGroup).
func RegisterConsumer(ctx context.Context, cli *clientv3.Client, service, group, consumer string, opts ...Option) (*Registration, error) {
	o := newOptions(opts)
	if err := validateNames(o.prefix, service, "group", group, "consumer", consumer); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	rec := newConsumerRecord(ConsumerValue{
		Consumer: consumer,
		Group:    group,
		Started:  time.Now().UTC(),
		Host:     host,
		Version:  o.version,
		Role:     cmp.Or(o.consumerRole, RoleConsumer),
	})
	return registerKey(ctx, cli, ConsumerKey(o.prefix, service, group, consumer), "", rec, o, "registry: consumer registered")
}

// validateNames checks the prefix, the service and each (what, name) pair.
func validateNames(prefix, service string, pairs ...string) error {
	errs := []error{ValidateName("prefix", prefix), ValidateName("service", service)}
	for i := 0; i+1 < len(pairs); i += 2 {
		errs = append(errs, ValidateName(pairs[i], pairs[i+1]))
	}
	return errors.Join(errs...)
}
