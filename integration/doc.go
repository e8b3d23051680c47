// Package integration holds multi-process fault tests: it builds the
// butterfly binary once and runs real etcd, intermediate, producer and
// consumer processes on distinct loopback addresses (127.0.0.2, 127.0.0.3, …
// stand in for hosts), kills, freezes, moves and drains them, and checks from
// the consumers' --out files and the producers' JSON summaries that every
// message was handled exactly once.
//
// Set BUTTERFLY_SOAK=1 (and BUTTERFLY_SOAK_DURATION, default 5m) to run the
// soak test: random faults every few seconds with the same accounting.
package integration
