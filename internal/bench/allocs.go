package bench

import "runtime/metrics"

// allocCount is a count of heap allocations: objects (as testing's
// allocs/op counts them, tiny allocations included) and bytes.
type allocCount struct{ objects, bytes uint64 }

// heapAllocs reads the process's cumulative heap allocations.
//
// They are process-wide: in a run they include what the embedded etcd, the
// sampler and other background goroutines allocate while a phase runs, a
// little beside the messages. Phases therefore read them right at their
// start and end, beside the CPU time, so that nothing outside the phase
// counts.
func heapAllocs() allocCount {
	s := []metrics.Sample{
		{Name: "/gc/heap/allocs:objects"},
		{Name: "/gc/heap/tiny/allocs:objects"},
		{Name: "/gc/heap/allocs:bytes"},
	}
	metrics.Read(s)
	val := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return allocCount{objects: val(0) + val(1), bytes: val(2)}
}

// sub is the allocations from b to a.
func (a allocCount) sub(b allocCount) allocCount {
	return allocCount{objects: a.objects - b.objects, bytes: a.bytes - b.bytes}
}

// setAllocs sets r's allocations per message from the allocations d of its
// phase; they stay 0 when the phase handled no message.
func (r *Result) setAllocs(d allocCount) {
	if r.Messages == 0 {
		return
	}
	r.AllocsPerMsg = float64(d.objects) / float64(r.Messages)
	r.AllocBytesPerMsg = float64(d.bytes) / float64(r.Messages)
}
