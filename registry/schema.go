package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultPrefix is the etcd key prefix used when none is configured.
const DefaultPrefix = "butterfly"

// DefaultService is the service name intermediates register under by default.
const DefaultService = "intermediate"

// ErrInvalidValue is wrapped by every error ParseValue returns.
var ErrInvalidValue = errors.New("registry: invalid value")

// Metadata is what an instance publishes about itself beside its address.
// Its JSON field names are part of the etcd key schema.
type Metadata struct {
	// Instance is the stable instance name; the last element of the key.
	Instance string `json:"instance"`
	// Epoch grows with every new incarnation of the instance, so an old
	// process can tell that it was replaced: one above the key's, or
	// where the key is gone, the store's revision plus one.
	Epoch uint64 `json:"epoch"`
	// Draining is set while the instance finishes what it holds; clients send
	// it nothing new.
	Draining bool `json:"draining"`
	// Weight is the relative share of new work the instance asks for; 0 is
	// read as 1.
	Weight uint32 `json:"weight,omitempty"`
	// Zone is the failure domain of the instance, for zone-local picks.
	Zone string `json:"zone,omitempty"`
	// Started is when this incarnation started.
	Started time.Time `json:"started"`
	// Version is the software version of the instance.
	Version string `json:"version,omitempty"`
}

// Value is the JSON stored at a service key. Its field names are those of
// etcd's own naming/endpoints package, so etcd's stock gRPC resolver reads
// Butterfly's keys.
type Value struct {
	// Addr is the instance's current "host:port".
	Addr string `json:"Addr"`
	// Metadata describes the instance.
	Metadata Metadata `json:"Metadata"`
}

// Instance is one registered instance of a service as seen in etcd.
type Instance struct {
	// Service is the service name, taken from the key.
	Service string
	// Name is the instance name, taken from the key.
	Name string
	// Addr is the instance's current "host:port".
	Addr string
	// Metadata describes the instance.
	Metadata Metadata
	// ModRevision is the etcd revision of the key's last change.
	ModRevision int64
}

// ServicesPrefix returns the key prefix under which every instance of
// service is registered: "<prefix>/services/<service>/".
func ServicesPrefix(prefix, service string) string {
	return prefix + "/services/" + service + "/"
}

// ServiceKey returns the key of one instance: "<prefix>/services/<service>/<instance>".
func ServiceKey(prefix, service, instance string) string {
	return ServicesPrefix(prefix, service) + instance
}

// ControlPrefix returns the key prefix of the control keys of service.
func ControlPrefix(prefix, service string) string {
	return prefix + "/control/" + service + "/"
}

// ControlKey returns the control key of one instance:
// "<prefix>/control/<service>/<instance>".
func ControlKey(prefix, service, instance string) string {
	return ControlPrefix(prefix, service) + instance
}

// MaxNameBytes is the longest name ValidateName takes. Names travel: a
// message handed back names its groups and consumers in its routes, up to
// 1 024 of them, and those routes must fit the frames that carry them.
const MaxNameBytes = 1024

// ValidateName reports whether s may be used as a prefix element, service,
// instance, group or consumer name: non-empty UTF-8 of at most MaxNameBytes,
// no '/', no white space or control characters. Its error is CheckName's,
// after the package's name.
func ValidateName(what, s string) error {
	if err := CheckName(what, s); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	return nil
}

// CheckName is ValidateName with an error that starts with what, the name's
// name (a flag, say): for a command line, whose usage errors start with the
// flag they name.
func CheckName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(s) > MaxNameBytes {
		return fmt.Errorf("%s of %d bytes is longer than %d", what, len(s), MaxNameBytes)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	for _, r := range s {
		if r == '/' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("%s %q contains %q", what, s, r)
		}
	}
	return nil
}

// ParseValue decodes and checks a service key's value. The instance name is
// the last element of the key; an invalid name (see ValidateName), a value
// whose Metadata.instance disagrees with it, or that has no valid Addr, is
// rejected. A missing Metadata.instance is filled from the key, so values
// written by other tools (etcdctl, etcd's endpoints manager) are accepted.
func ParseValue(instance string, data []byte) (Value, error) {
	if err := ValidateName("instance", instance); err != nil {
		return Value{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	var v Value
	if err := json.Unmarshal(data, &v); err != nil {
		return Value{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	if err := ValidateAddr(v.Addr); err != nil {
		return Value{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	if err := checkEpoch(v.Metadata.Epoch); err != nil {
		return Value{}, fmt.Errorf("%w: %w", ErrInvalidValue, err)
	}
	switch v.Metadata.Instance {
	case "":
		v.Metadata.Instance = instance
	case instance:
	default:
		return Value{}, fmt.Errorf("%w: Metadata.instance %q does not match key instance %q", ErrInvalidValue, v.Metadata.Instance, instance)
	}
	return v, nil
}

// ValidateAddr checks that addr is a "host:port" with a non-empty host and a
// port from 1 to 65535.
func ValidateAddr(addr string) error {
	if addr == "" {
		return errors.New("Addr is empty")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("Addr %q: %w", addr, err)
	}
	if host == "" || strings.ContainsAny(host, " /") {
		return fmt.Errorf("Addr %q: bad host", addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return fmt.Errorf("Addr %q: bad port", addr)
	}
	return nil
}

// Marshal encodes v as the JSON stored at a service key.
func (v Value) Marshal() ([]byte, error) {
	return json.Marshal(v)
}
