package multiraft

// HasWork reports whether group id's inbox holds a request, for tests that
// start a blocking call on another goroutine and must know it was queued
// before they drive the Host.
func (h *Host) HasWork(id uint64) bool {
	g, err := h.lookup(id)
	if err != nil {
		return false
	}
	g.in.Lock()
	defer g.in.Unlock()
	return len(g.in.transfers)+len(g.in.props)+len(g.in.reads) > 0
}
