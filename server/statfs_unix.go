//go:build unix

package server

import "syscall"

// availableBytes returns the bytes the file system of dir has left for an
// unprivileged user; 0 if it cannot tell.
func availableBytes(dir string) uint64 {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0
	}
	return fs.Bavail * uint64(fs.Bsize)
}
