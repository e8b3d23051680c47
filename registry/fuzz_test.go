package registry

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseValue checks that ParseValue accepts only values with a valid
// address and a matching instance, and that what it accepts survives a
// Marshal round trip.
func FuzzParseValue(f *testing.F) {
	f.Add("i1", []byte(`{"Addr":"127.0.0.1:7001","Metadata":{"instance":"i1","epoch":3,"draining":true,"weight":2,"zone":"z","started":"2024-05-01T10:00:00Z","version":"v1"}}`))
	f.Add("i1", []byte(`{"Addr":"127.0.0.1:7001"}`))
	f.Add("i1", []byte(`{"Op":0,"Addr":"[::1]:80","Metadata":null}`))
	f.Add("i1", []byte(`{"Addr":"host:65536"}`))
	f.Add("i1", []byte(`{"Addr":":80"}`))
	f.Add("i1", []byte(`{"Addr":"127.0.0.1:7001","Metadata":{"instance":"i2"}}`))
	f.Add("i1", []byte(`{"Addr":"127.0.0.1:7001","Metadata":{"started":"2024-05-01T10:00:00+02:00"}}`))
	f.Add("i1", []byte(`{"Addr":"127.0.0.1:7001","Metadata":"text"}`))
	f.Add("i1", []byte(`null`))
	f.Add("i1", []byte(`garbage`))
	f.Add("", []byte(`{}`))
	f.Fuzz(func(t *testing.T, instance string, data []byte) {
		v, err := ParseValue(instance, data)
		if err != nil {
			return
		}
		if err := ValidateAddr(v.Addr); err != nil {
			t.Fatalf("ParseValue(%q, %q).Addr = %q, invalid: %v", instance, data, v.Addr, err)
		}
		if v.Metadata.Instance != instance {
			t.Fatalf("ParseValue(%q, %q).Metadata.Instance = %q, want %q", instance, data, v.Metadata.Instance, instance)
		}
		b, err := v.Marshal()
		if err != nil {
			// Only times JSON cannot encode (years outside 0..9999) fail.
			return
		}
		again, err := ParseValue(instance, b)
		if err != nil {
			t.Fatalf("ParseValue(%q, Marshal(%+v)) = %v, want nil", instance, v, err)
		}
		if diff := cmp.Diff(v, again); diff != "" {
			t.Fatalf("ParseValue(Marshal(v)) differs from v (-v +again):\n%s", diff)
		}
	})
}
