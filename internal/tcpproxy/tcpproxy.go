// Package tcpproxy is a TCP proxy for fault tests that can blackhole its
// connections: while blackholed, bytes are read and thrown away in both
// directions and nothing is closed, so the peers see an open but silent
// connection, as with a frozen host or a partial network partition.
//
//	p, err := tcpproxy.Listen("127.0.0.5:0", backendAddr)
//	defer p.Close()
//	p.Blackhole(true)  // connections stay open, nothing gets through
//	p.Blackhole(false) // traffic flows again (bytes dropped meanwhile are gone)
package tcpproxy

import (
	"net"
	"sync"
	"sync/atomic"
)

// Proxy forwards connections from its listener to one backend address.
type Proxy struct {
	lis     net.Listener
	backend string
	black   atomic.Bool
	wg      sync.WaitGroup

	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]struct{}
	closed bool
}

// Listen starts a proxy listening on addr that forwards to backend.
func Listen(addr, backend string) (*Proxy, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &Proxy{lis: lis, backend: backend, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Blackhole starts (true) or stops (false) dropping all traffic while
// keeping every connection open.
func (p *Proxy) Blackhole(on bool) { p.black.Store(on) }

// Close stops the proxy, closes every connection and waits for its
// goroutines. Safe to call twice.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.lis.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.backend)
		if err != nil {
			in.Close()
			continue
		}
		if !p.track(in) || !p.track(out) {
			in.Close()
			out.Close()
			return
		}
		p.wg.Add(2)
		go p.pipe(out, in)
		go p.pipe(in, out)
	}
}

// pipe copies src to dst, dropping bytes while blackholed. When either side
// ends, both are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.black.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
