package transport

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteBack asks the kernel to start writing f's dirty pages to disk
// and returns without waiting: a later Sync then has little left to do.
// Best effort: an error here shows up in that Sync.
func startWriteBack(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
