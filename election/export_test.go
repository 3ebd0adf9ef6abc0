package election

// Walked returns how many groups Due looked at so far.
func (l *Lessor) Walked() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.walked
}
