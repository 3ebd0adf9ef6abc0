package chaos

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// The flotilla binary of the real-process tests is built once per test
// binary, on first use (so that -run filters that select no process test
// build nothing), into a temporary directory that TestMain removes.
var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
	skip string
}

// flotillaBinary returns the path of a freshly built flotilla binary, or
// skips the test when cmd/flotilla is missing or does not compile.
func flotillaBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			binary.skip = "cannot locate the module: " + err.Error()
			return
		}
		src := filepath.Join(string(trimNL(root)), "cmd", "flotilla")
		if _, err := os.Stat(src); err != nil {
			binary.skip = "cmd/flotilla does not exist yet: " + err.Error()
			return
		}
		if binary.dir, err = os.MkdirTemp("", "flotilla-chaos-"); err != nil {
			binary.err = err
			return
		}
		binary.path = filepath.Join(binary.dir, "flotilla")
		out, err := exec.Command("go", "build", "-o", binary.path, "github.com/flotilla/flotilla/cmd/flotilla").CombinedOutput()
		if err != nil {
			binary.skip = "cmd/flotilla does not compile: " + err.Error() + "\n" + string(out)
		}
	})
	switch {
	case binary.err != nil:
		t.Fatal(binary.err)
	case binary.skip != "":
		t.Skip("real-process chaos tests skipped: " + binary.skip)
	}
	return binary.path
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// removeBinary deletes the built binary; TestMain calls it.
func removeBinary() {
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
}

// newFirewall returns the chaos firewall, removed at cleanup, or skips the
// test when iptables cannot be used here.
func newFirewall(t *testing.T) *Firewall {
	t.Helper()
	f, err := NewFirewall(DefaultChain)
	if errors.Is(err, ErrNoFirewall) {
		t.Skipf("iptables chaos tests skipped: %v (run as root with iptables installed: apt-get install -y iptables)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}
