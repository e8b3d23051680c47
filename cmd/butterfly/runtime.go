package main

import (
	"google.golang.org/grpc/experimental"

	"github.com/butterfly-mesh/butterfly/internal/bufpool"
)

// Every gRPC client and server in the process, and the proto codec, take
// their buffers from a pool with a tier per power of two that does not zero
// what it hands out again (see internal/bufpool). It must be set before any
// connection or server exists, hence init.
func init() {
	experimental.SetDefaultBufferPool(bufpool.New())
}
