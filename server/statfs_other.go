//go:build !unix

package server

// availableBytes returns 0 (not known) where statfs is not available.
func availableBytes(string) uint64 { return 0 }
