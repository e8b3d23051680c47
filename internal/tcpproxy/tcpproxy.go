// Package tcpproxy is a TCP proxy for fault tests that can blackhole its
// connections: while blackholed, nothing is forwarded in either direction and
// nothing is closed, so the peers see an open but silent connection, as with
// a frozen host or a network partition. What was sent meanwhile is held, not
// thrown away, and arrives when the blackhole ends, as TCP's retransmissions
// deliver it once a partition heals: a TCP connection never loses bytes from
// the middle of its stream, and a proxy that did would break the framing and
// flow control of the protocol above it.
//
//	p, err := tcpproxy.Listen("127.0.0.5:0", backendAddr)
//	defer p.Close()
//	p.Blackhole(true)  // connections stay open, nothing gets through
//	p.Blackhole(false) // what was held flows, then new traffic
package tcpproxy

import (
	"net"
	"sync"
)

// Proxy forwards connections from its listener to one backend address.
type Proxy struct {
	lis     net.Listener
	backend string
	wg      sync.WaitGroup
	done    chan struct{} // closed by Close

	mu     sync.Mutex // guards conns, closed and resume
	conns  map[net.Conn]struct{}
	closed bool
	resume chan struct{} // non-nil while blackholed; closed when it ends
}

// Listen starts a proxy listening on addr that forwards to backend.
func Listen(addr, backend string) (*Proxy, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &Proxy{lis: lis, backend: backend, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Blackhole starts (true) or stops (false) holding all traffic while
// keeping every connection open. Bytes held during a blackhole are
// forwarded, in order, when it ends.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case on && p.resume == nil:
		p.resume = make(chan struct{})
	case !on && p.resume != nil:
		close(p.resume)
		p.resume = nil
	}
}

// pass waits while the proxy is blackholed; false when the proxy closes.
func (p *Proxy) pass() bool {
	p.mu.Lock()
	resume := p.resume
	p.mu.Unlock()
	if resume == nil {
		return true
	}
	select {
	case <-resume:
		return true
	case <-p.done:
		return false
	}
}

// Close stops the proxy, closes every connection and waits for its
// goroutines. Safe to call twice.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
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

// pipe copies src to dst, holding bytes while blackholed: it reads no more
// until the blackhole ends, so the sender's socket buffers fill as with a
// silent peer. When either side ends, both are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
