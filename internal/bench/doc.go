// Package bench measures Butterfly beside plain-gRPC baselines in the same
// run, on the same machine, for `butterfly bench`.
//
// The baselines move Butterfly's own wire messages without its machinery:
// raw gRPC bidirectional streaming over one hop (one message per gRPC
// message, and batched as Butterfly batches), and the two-hop relay with
// end-to-end acknowledgements a user would write by hand. Run then starts an
// embedded etcd, intermediates, producers and consumers in the process, and
// measures Butterfly at saturation and at half of it (throughput, end-to-end
// latency, CPU and heap allocations per message, peak heap), and under
// faults at steady load: a hard stop, a move to a new address, a frozen
// intermediate and a drain at full load, with the messages lost computed
// from exact ids.
//
//	r, err := bench.Run(ctx, cfg)
//	if err != nil {
//		return err
//	}
//	r.WriteTable(os.Stdout)
//	json.NewEncoder(os.Stdout).Encode(r)
package bench
