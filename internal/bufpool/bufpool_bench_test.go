package bufpool

import (
	"testing"

	"google.golang.org/grpc/mem"
)

// BenchmarkPool_GetPut measures a Get and Put of a batch-sized buffer
// (64 messages of 256 B), against gRPC's default pool.
func BenchmarkPool_GetPut(b *testing.B) {
	const size = 18 << 10
	for _, tc := range []struct {
		name string
		pool mem.BufferPool
	}{
		{"bufpool", New()},
		{"grpc-default", mem.DefaultBufferPool()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bp := tc.pool.Get(size)
				(*bp)[0] = 1
				tc.pool.Put(bp)
			}
		})
	}
}
