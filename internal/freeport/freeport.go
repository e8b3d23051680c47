// Package freeport picks loopback ports that were free a moment ago, for
// servers that must be told their ports before they bind them (an etcd
// member names its URLs in its configuration), and picks again when
// another process takes one first.
package freeport

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// attempts is how many pairs of ports Pair tries.
const attempts = 3

// Loopback returns 127.0.0.1:PORT with a port that was free a moment ago:
// nothing listens on it.
func Loopback() (string, error) {
	addrs, err := pick(1)
	if err != nil {
		return "", err
	}
	return addrs[0], nil
}

// pick returns n loopback addresses whose ports were free a moment ago, and
// distinct: each is held until every one is picked.
func pick(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("freeport: %w", err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// Pair calls start with two loopback addresses that were free when picked,
// and with two others, up to three times in all, while start fails with
// EADDRINUSE: another process (a test binary of another package, a client
// connection's port) may take a picked port before start binds it. It
// returns start's last error.
func Pair(start func(a, b string) error) error {
	for attempt := 1; ; attempt++ {
		addrs, err := pick(2)
		if err != nil {
			return err
		}
		err = start(addrs[0], addrs[1])
		if attempt == attempts || !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
	}
}
