// Package bufpool is a gRPC buffer pool (google.golang.org/grpc/mem) with a
// tier for every power of two from 256 B to 4 MiB, each a sync.Pool, that
// does not zero a buffer it hands out again. gRPC fills every buffer it
// gets before it reads it, so the zeroing the default pool does is work
// the data path pays for nothing; the finer tiers also waste less of a
// batch-sized buffer than the default's five.
//
//	func init() { experimental.SetDefaultBufferPool(bufpool.New()) }
package bufpool
