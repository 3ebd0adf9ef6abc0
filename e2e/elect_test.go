package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
)

// syncBuffer is a bytes.Buffer safe for a writer process and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// bgProc is a flotilla command running in the background.
type bgProc struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	exited         chan error
}

func startBG(t *testing.T, args ...string) *bgProc {
	t.Helper()
	p := &bgProc{cmd: exec.Command(bin, args...), exited: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *bgProc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		p.exited <- nil // for the cleanup
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("%v did not exit within %v; stderr:\n%s", p.cmd.Args, d, p.stderr.String())
	}
	return -1
}

func TestElectCLI(t *testing.T) {
	c := newProcCluster(t, 4)
	eps := strings.Join(c.endpoints(0), ",")
	c.waitLed(t, 4)
	if r := run(t, nil, "elect", "lock", "--leader", "--endpoints", eps); r.code != 3 {
		t.Fatalf("--leader with no holder: exit %d, want 3; %s", r.code, r.stderr)
	}
	if r := run(t, nil, "elect", "lock", "--endpoints", eps); r.code == 0 {
		t.Fatal("elect NAME without VALUE or a mode succeeded")
	}
	obs := startBG(t, "elect", "lock", "--observe", "--endpoints", eps)
	waitFor(t, 10*time.Second, "observer's first state", func() error {
		if !strings.Contains(obs.stdout.String(), "no leader") {
			return fmt.Errorf("observer printed %q", obs.stdout.String())
		}
		return nil
	})

	a := startBG(t, "elect", "lock", "A", "--ttl", "1s", "--endpoints", eps)
	waitFor(t, 10*time.Second, "A elected", func() error {
		if !strings.Contains(a.stdout.String(), "elected") {
			return fmt.Errorf("A printed %q %q", a.stdout.String(), a.stderr.String())
		}
		return nil
	})
	if r := run(t, nil, "elect", "lock", "--leader", "--endpoints", eps); r.code != 0 || strings.TrimSpace(r.stdout) != "A" {
		t.Fatalf("--leader: exit %d, %q, want A", r.code, r.stdout)
	}
	b := startBG(t, "elect", "lock", "B", "--ttl", "1s", "--endpoints", eps)
	cl, err := client.New(context.Background(), client.Config{Endpoints: c.endpoints(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	e, _ := cl.Election("lock")
	waitFor(t, 10*time.Second, "B campaigning", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := e.Leader(ctx)
		if err != nil {
			return err
		}
		if st.Candidates != 2 {
			return fmt.Errorf("%d candidates", st.Candidates)
		}
		return nil
	})

	killed := time.Now()
	a.cmd.Process.Kill() // kill -9: no resign, no revoke
	var took time.Duration
	waitFor(t, 10*time.Second, "B elected", func() error {
		if !strings.Contains(b.stdout.String(), "elected") {
			return fmt.Errorf("B printed %q", b.stdout.String())
		}
		took = time.Since(killed)
		return nil
	})
	t.Logf("holder killed with SIGKILL; B elected within %v (TTL 1s, election timeout 200ms, 50ms polling)", took)
	if took > 1500*time.Millisecond {
		t.Errorf("replacement took %v", took)
	}
	if r := run(t, nil, "elect", "lock", "--leader", "--endpoints", eps); strings.TrimSpace(r.stdout) != "B" {
		t.Fatalf("--leader: %q, want B", r.stdout)
	}

	b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("B exit %d after SIGTERM; stderr %s", code, b.stderr.String())
	}
	if !strings.Contains(b.stdout.String(), "resigned") {
		t.Errorf("B printed %q, want resigned", b.stdout.String())
	}
	if r := run(t, nil, "elect", "lock", "--leader", "--endpoints", eps); r.code != 3 {
		t.Fatalf("--leader after resign: exit %d, want 3", r.code)
	}
	waitFor(t, 10*time.Second, "observer saw every change", func() error {
		var holders []string
		for _, line := range strings.Split(strings.TrimSpace(obs.stdout.String()), "\n") {
			h := "none"
			if strings.HasPrefix(line, "leader ") {
				h = strings.Fields(line)[1]
			}
			if len(holders) == 0 || holders[len(holders)-1] != h {
				holders = append(holders, h)
			}
		}
		if got := strings.Join(holders, ","); got != "none,A,B,none" {
			return fmt.Errorf("holders %s:\n%s", got, obs.stdout.String())
		}
		return nil
	})
	obs.cmd.Process.Signal(syscall.SIGINT)
	if code := obs.wait(t, 10*time.Second); code != 0 {
		t.Errorf("observer exit %d after SIGINT", code)
	}
}
