package registry

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

// BenchmarkWatch_PutToView measures how long a registration change takes to
// reach a Watch callback on an embedded etcd: from the put to the view that
// holds it. It reports the p50 and p99 beside the mean.
func BenchmarkWatch_PutToView(b *testing.B) {
	srv := etcdtest.Start(b)
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatalf("clientv3.New() = %v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithCancel(b.Context())
	views := make(chan int64, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		Watch(ctx, cli, "bench", func(v View) {
			select {
			case views <- v.Revision:
			case <-ctx.Done():
			}
		})
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	key := ServiceKey(DefaultPrefix, "bench", "i1")
	var lat []time.Duration
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		val, err := Value{Addr: fmt.Sprintf("127.0.0.1:%d", 1000+i%50000), Metadata: Metadata{Instance: "i1", Epoch: uint64(i)}}.Marshal()
		if err != nil {
			b.Fatalf("Marshal() = %v", err)
		}
		start := time.Now()
		resp, err := cli.Put(ctx, key, string(val))
		if err != nil {
			b.Fatalf("Put(%s) = %v", key, err)
		}
		for rev := int64(0); rev < resp.Header.Revision; {
			select {
			case rev = <-views:
			case <-time.After(10 * time.Second):
				b.Fatalf("no view with revision %d after 10s", resp.Header.Revision)
			}
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkParseValue measures decoding one registration value, as Watch
// does for every event.
func BenchmarkParseValue(b *testing.B) {
	data, err := Value{Addr: "127.0.0.2:7000", Metadata: Metadata{Instance: "i1", Epoch: 3, Weight: 100, Zone: "a", Started: time.Now(), Version: "v1"}}.Marshal()
	if err != nil {
		b.Fatalf("Marshal() = %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseValue("i1", data); err != nil {
			b.Fatalf("ParseValue() = %v", err)
		}
	}
}
