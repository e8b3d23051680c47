package components

// OpenStreams returns how many subscribe streams c has open: a stream that
// ended is counted no more.
func (c *Consumer) OpenStreams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}
