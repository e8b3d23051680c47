package balancer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc/serviceconfig"
)

// Defaults of the policy configuration.
const (
	DefaultConsecutiveFailures = 5
	DefaultBaseEjectionTime    = time.Second
	DefaultMaxEjectionTime     = 30 * time.Second
	DefaultMaxEjectedPercent   = 50
	DefaultBackoffBaseDelay    = 100 * time.Millisecond
	DefaultBackoffMaxDelay     = 3 * time.Second
)

// Config is the configuration of the butterfly policy, given in the service
// config:
//
//	{"loadBalancingConfig":[{"butterfly":{
//	  "localZone":"eu-1a",
//	  "ejection":{"consecutiveFailures":5,"baseEjectionTime":"1s","maxEjectionTime":"30s","maxEjectedPercent":50},
//	  "backoff":{"baseDelay":"100ms","maxDelay":"3s"}
//	}}]}
//
// Every field is optional; durations are Go duration strings.
type Config struct {
	// LocalZone, when set, makes unpinned picks prefer eligible instances
	// whose Metadata.Zone equals it.
	LocalZone string
	// Ejection configures outlier ejection.
	Ejection EjectionConfig
	// Backoff configures reconnection.
	Backoff BackoffConfig
}

// EjectionConfig configures outlier ejection: an instance whose last
// ConsecutiveFailures RPCs failed (see the package documentation for what
// counts as a failure) gets no unpinned picks for BaseEjectionTime times the
// number of its consecutive ejections, at most MaxEjectionTime.
type EjectionConfig struct {
	// ConsecutiveFailures is the number of failed RPCs in a row that ejects
	// an instance; 0 disables ejection.
	ConsecutiveFailures uint32
	// BaseEjectionTime is the length of a first ejection.
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps the length of an ejection.
	MaxEjectionTime time.Duration
	// MaxEjectedPercent caps the share of instances ejected at once; at
	// least one instance is never ejected.
	MaxEjectedPercent uint32
}

// BackoffConfig configures reconnection. The channel's own connection
// backoff (grpc.WithConnectParams) paces the attempts to reach an address;
// butterfly.DialOptions sets it from this config. The balancer itself uses
// it to damp an instance whose connection keeps dropping soon after it
// became READY: the first reconnect is immediate, the next ones wait
// BaseDelay, doubling up to MaxDelay, until a connection stays up for
// MaxDelay.
type BackoffConfig struct {
	// BaseDelay is the first reconnect delay.
	BaseDelay time.Duration
	// MaxDelay caps the reconnect delay.
	MaxDelay time.Duration
}

// DefaultConfig returns the configuration used for absent fields.
func DefaultConfig() Config {
	return Config{
		Ejection: EjectionConfig{
			ConsecutiveFailures: DefaultConsecutiveFailures,
			BaseEjectionTime:    DefaultBaseEjectionTime,
			MaxEjectionTime:     DefaultMaxEjectionTime,
			MaxEjectedPercent:   DefaultMaxEjectedPercent,
		},
		Backoff: BackoffConfig{
			BaseDelay: DefaultBackoffBaseDelay,
			MaxDelay:  DefaultBackoffMaxDelay,
		},
	}
}

// jsonConfig is the wire form of Config; pointers tell absent from zero.
type jsonConfig struct {
	LocalZone *string `json:"localZone"`
	Ejection  *struct {
		ConsecutiveFailures *uint32   `json:"consecutiveFailures"`
		BaseEjectionTime    *duration `json:"baseEjectionTime"`
		MaxEjectionTime     *duration `json:"maxEjectionTime"`
		MaxEjectedPercent   *uint32   `json:"maxEjectedPercent"`
	} `json:"ejection"`
	Backoff *struct {
		BaseDelay *duration `json:"baseDelay"`
		MaxDelay  *duration `json:"maxDelay"`
	} `json:"backoff"`
}

// duration decodes a JSON string such as "100ms".
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"100ms\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("duration %q is not positive", s)
	}
	*d = duration(v)
	return nil
}

// ParseConfig parses the JSON configuration of the butterfly policy (the
// object under "butterfly" in loadBalancingConfig). Absent fields take their
// DefaultConfig values; unknown fields are ignored, as gRPC asks of policies.
func ParseConfig(js []byte) (Config, error) {
	cfg := DefaultConfig()
	if len(bytes.TrimSpace(js)) == 0 || string(bytes.TrimSpace(js)) == "null" {
		return cfg, nil
	}
	var jc jsonConfig
	if err := json.Unmarshal(js, &jc); err != nil {
		return Config{}, fmt.Errorf("balancer: config %s: %w", js, err)
	}
	if jc.LocalZone != nil {
		cfg.LocalZone = *jc.LocalZone
	}
	if e := jc.Ejection; e != nil {
		if e.ConsecutiveFailures != nil {
			cfg.Ejection.ConsecutiveFailures = *e.ConsecutiveFailures
		}
		if e.BaseEjectionTime != nil {
			cfg.Ejection.BaseEjectionTime = time.Duration(*e.BaseEjectionTime)
		}
		if e.MaxEjectionTime != nil {
			cfg.Ejection.MaxEjectionTime = time.Duration(*e.MaxEjectionTime)
		}
		if e.MaxEjectedPercent != nil {
			cfg.Ejection.MaxEjectedPercent = *e.MaxEjectedPercent
		}
	}
	if b := jc.Backoff; b != nil {
		if b.BaseDelay != nil {
			cfg.Backoff.BaseDelay = time.Duration(*b.BaseDelay)
		}
		if b.MaxDelay != nil {
			cfg.Backoff.MaxDelay = time.Duration(*b.MaxDelay)
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate reports whether c is usable.
func (c Config) Validate() error {
	e := c.Ejection
	if e.MaxEjectedPercent > 100 {
		return fmt.Errorf("balancer: ejection.maxEjectedPercent %d is above 100", e.MaxEjectedPercent)
	}
	if e.ConsecutiveFailures > 0 {
		if e.BaseEjectionTime <= 0 {
			return fmt.Errorf("balancer: ejection.baseEjectionTime %v is not positive", e.BaseEjectionTime)
		}
		if e.MaxEjectionTime < e.BaseEjectionTime {
			return fmt.Errorf("balancer: ejection.maxEjectionTime %v is below baseEjectionTime %v", e.MaxEjectionTime, e.BaseEjectionTime)
		}
	}
	b := c.Backoff
	if b.BaseDelay <= 0 {
		return fmt.Errorf("balancer: backoff.baseDelay %v is not positive", b.BaseDelay)
	}
	if b.MaxDelay < b.BaseDelay {
		return fmt.Errorf("balancer: backoff.maxDelay %v is below baseDelay %v", b.MaxDelay, b.BaseDelay)
	}
	return nil
}

// JSON returns c in the form ParseConfig reads.
func (c Config) JSON() string {
	type ejection struct {
		ConsecutiveFailures uint32 `json:"consecutiveFailures"`
		BaseEjectionTime    string `json:"baseEjectionTime"`
		MaxEjectionTime     string `json:"maxEjectionTime"`
		MaxEjectedPercent   uint32 `json:"maxEjectedPercent"`
	}
	type backoff struct {
		BaseDelay string `json:"baseDelay"`
		MaxDelay  string `json:"maxDelay"`
	}
	out := struct {
		LocalZone string   `json:"localZone,omitempty"`
		Ejection  ejection `json:"ejection"`
		Backoff   backoff  `json:"backoff"`
	}{
		LocalZone: c.LocalZone,
		Ejection: ejection{
			ConsecutiveFailures: c.Ejection.ConsecutiveFailures,
			BaseEjectionTime:    c.Ejection.BaseEjectionTime.String(),
			MaxEjectionTime:     c.Ejection.MaxEjectionTime.String(),
			MaxEjectedPercent:   c.Ejection.MaxEjectedPercent,
		},
		Backoff: backoff{
			BaseDelay: c.Backoff.BaseDelay.String(),
			MaxDelay:  c.Backoff.MaxDelay.String(),
		},
	}
	// Marshaling strings and integers cannot fail.
	b, _ := json.Marshal(out)
	return string(b)
}

// ServiceConfig returns a service config selecting the butterfly policy
// with configuration js (an object as read by ParseConfig; empty means
// "{}"), for grpc.WithDefaultServiceConfig.
func ServiceConfig(js string) string {
	if len(bytes.TrimSpace([]byte(js))) == 0 {
		js = "{}"
	}
	return `{"loadBalancingConfig":[{"` + Name + `":` + js + `}]}`
}

// lbConfig is the parsed policy config handed to the balancer by gRPC.
type lbConfig struct {
	serviceconfig.LoadBalancingConfig
	Config
}
