package chaos

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// ErrNoFirewall: iptables cannot be used here (not root, or no iptables
// binary). Tests skip on it.
var ErrNoFirewall = errors.New("chaos: iptables unavailable")

// DefaultChain is the prefix of the iptables chain that holds a process's
// chaos rules: the chain is DefaultChain-PID, so that test processes
// running at once (go test ./... on a shared machine) never flush each
// other's rules.
const DefaultChain = "FLOTILLA-CHAOS"

// Firewall drops real packets with iptables. Every rule lives in one
// dedicated chain, jumped to from the top of OUTPUT (loopback traffic
// traverses OUTPUT once, so one place catches every local packet), so that
// Close removes them all with one flush. Methods are safe for concurrent
// use. Firewall.mu is a leaf that guards only the closed flag; it is never
// held while iptables runs.
type Firewall struct {
	chain string
	bin   string

	mu struct {
		sync.Mutex
		closed bool
	}
}

// NewFirewall creates the chain prefix-PID (prefix default DefaultChain)
// and hooks it into OUTPUT, after removing the chains that processes no
// longer alive left behind (a crashed run). It fails with ErrNoFirewall when not root or when
// iptables is missing or does not work. The caller must Close it (in tests:
// t.Cleanup right away), even if the test fails.
func NewFirewall(chain string) (*Firewall, error) {
	if chain == "" {
		chain = DefaultChain
	}
	prefix := chain + "-"
	chain = prefix + strconv.Itoa(os.Getpid())
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: not root (euid %d)", ErrNoFirewall, os.Geteuid())
	}
	bin, err := exec.LookPath("iptables")
	if err != nil {
		return nil, fmt.Errorf("%w: %v (apt-get install -y iptables)", ErrNoFirewall, err)
	}
	f := &Firewall{chain: chain, bin: bin}
	if err := f.run("-n", "-L", "OUTPUT"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoFirewall, err)
	}
	f.sweep(prefix)
	f.remove()
	if err := f.run("-N", chain); err != nil {
		return nil, err
	}
	if err := f.run("-I", "OUTPUT", "1", "-j", chain); err != nil {
		f.remove()
		return nil, err
	}
	return f, nil
}

func (f *Firewall) run(args ...string) error {
	out, err := exec.Command(f.bin, append([]string{"-w", "5"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chaos: iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sweep removes the chains named prefix-PID of processes that are gone.
func (f *Firewall) sweep(prefix string) {
	out, err := exec.Command(f.bin, "-w", "5", "-S").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, ok := strings.CutPrefix(line, "-N "+prefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		(&Firewall{chain: prefix + name, bin: f.bin}).remove()
	}
}

// Chain returns the name of the chain holding this Firewall's rules.
func (f *Firewall) Chain() string { return f.chain }

// remove deletes the jump and the chain, ignoring what does not exist.
func (f *Firewall) remove() {
	for f.run("-D", "OUTPUT", "-j", f.chain) == nil {
	}
	_ = f.run("-F", f.chain)
	_ = f.run("-X", f.chain)
}

// DropLink silently drops every TCP packet from srcIP to dstIP:dport: the
// directed link of a node whose peer address has host srcIP to a node
// whose peer address is dstIP:dport. Outbound peer connections use the peer
// address's host as their source, so this cuts exactly one direction of
// raft traffic; packets are dropped, not rejected: no RST, no error.
func (f *Firewall) DropLink(srcIP, dstIP string, dport int) error {
	f.mu.Lock()
	closed := f.mu.closed
	f.mu.Unlock()
	if closed {
		return fmt.Errorf("chaos: firewall closed")
	}
	return f.run("-A", f.chain, "-s", srcIP, "-d", dstIP, "-p", "tcp", "--dport", strconv.Itoa(dport), "-j", "DROP")
}

// Packets returns how many packets the chain's rules have dropped since
// they were added.
func (f *Firewall) Packets() (uint64, error) {
	out, err := exec.Command(f.bin, "-w", "5", "-L", f.chain, "-n", "-v", "-x").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("chaos: iptables -L %s: %v: %s", f.chain, err, out)
	}
	var n uint64
	for _, line := range strings.Split(string(out), "\n") {
		fs := strings.Fields(line)
		if len(fs) > 2 && fs[2] == "DROP" {
			p, err := strconv.ParseUint(fs[0], 10, 64)
			if err == nil {
				n += p
			}
		}
	}
	return n, nil
}

// Flush removes every rule of the chain, keeping the chain.
func (f *Firewall) Flush() error { return f.run("-F", f.chain) }

// Rules returns the chain's rules as iptables -S prints them.
func (f *Firewall) Rules() (string, error) {
	out, err := exec.Command(f.bin, "-w", "5", "-S", f.chain).CombinedOutput()
	return string(out), err
}

// Close removes every rule, the jump and the chain. Safe to call more than
// once.
func (f *Firewall) Close() {
	f.mu.Lock()
	if f.mu.closed {
		f.mu.Unlock()
		return
	}
	f.mu.closed = true
	f.mu.Unlock()
	f.remove()
}
