package main

import (
	"math"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// quotaWorkers returns the raft workers of a node started without
// --workers under a CPU quota (and the quota, in CPUs): the quota rounded
// up, at least 1 and at most GOMAXPROCS; 0 (the engine's default,
// GOMAXPROCS) without a quota or with one it cannot read. read is
// os.ReadFile but in tests.
//
// Why: each worker does one storage batch and one fsync per cycle, so the
// workers of a node given a fifth of a CPU spent it on small parallel
// syncs. With NODE_CPU=0.2 (tools/scalebench.sh, three alternating pairs),
// 1 worker served 1.25, 1.31 and 1.06x the puts/s of 4 (GOMAXPROCS, which
// main raises to 4) on 5 nodes; on 3, 1.37, 0.95 and 0.99x (BENCHMARKS.md,
// "A CPU quota per node").
func quotaWorkers(read func(string) ([]byte, error)) (int, float64) {
	q, ok := cpuQuota(read)
	if !ok {
		return 0, 0
	}
	return workersFor(q, runtime.GOMAXPROCS(0)), q
}

// workersFor returns the workers for a quota of q CPUs with procs Ps: q
// rounded up, at least 1, at most procs.
func workersFor(q float64, procs int) int {
	return max(1, min(int(math.Ceil(q)), procs))
}

// cpuQuota returns the CPU bandwidth limit of this process, in CPUs (0.2: a
// fifth of one): the lowest limit of its cgroup and the cgroup's ancestors
// under the mount, read through read (os.ReadFile) from cgroup v1's cpu
// controller (cpu.cfs_quota_us over cpu.cfs_period_us) if it has one, else
// from cgroup v2 (cpu.max). ok is false without a limit, and when the files
// cannot be read or parsed (then the caller keeps its default).
func cpuQuota(read func(string) ([]byte, error)) (cpus float64, ok bool) {
	cg, err := read("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	mi, err := read("/proc/self/mountinfo")
	if err != nil {
		return 0, false
	}
	// Lines of /proc/self/cgroup: "hierarchy:controllers:path"; v2's is
	// "0::path".
	var v1, v2 string
	var haveV1, haveV2 bool
	for _, l := range strings.Split(string(cg), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] == "0" && f[1] == "":
			v2, haveV2 = f[2], true
		case slices.Contains(strings.Split(f[1], ","), "cpu"):
			v1, haveV1 = f[2], true
		}
	}
	// Lines of mountinfo: "id parent major:minor root mountpoint options
	// [optional...] - fstype source superoptions".
	for _, l := range strings.Split(string(mi), "\n") {
		pre, post, found := strings.Cut(l, " - ")
		if !found {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		root, mount := unescape(f[3]), unescape(f[4])
		switch {
		case haveV1 && g[0] == "cgroup" && slices.Contains(strings.Split(g[2], ","), "cpu"):
			if p, ok := rel(root, v1); ok {
				return walkQuota(read, mount, p, quotaV1)
			}
		case !haveV1 && haveV2 && g[0] == "cgroup2":
			if p, ok := rel(root, v2); ok {
				return walkQuota(read, mount, p, quotaV2)
			}
		}
	}
	return 0, false
}

// rel returns cgroup path p relative to a mount whose root is root (in a
// container, the mount's root is the container's own cgroup); false if p
// is not under root (another mount of the hierarchy may hold it), or lies
// outside this cgroup namespace ("/../..").
func rel(root, p string) (string, bool) {
	if !strings.HasPrefix(p, "/") || p == "/.." || strings.HasPrefix(p, "/../") {
		return "", false
	}
	switch {
	case root == "/":
		return p, true
	case p == root:
		return "/", true
	case strings.HasPrefix(p, root+"/"):
		return p[len(root):], true
	}
	return "", false
}

// unescape undoes mountinfo's octal escapes of a path ("\040" for a
// space, and tab, newline and backslash).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// walkQuota reads the limit of the cgroup at mount+p and of each ancestor
// up to the mount's root, and returns the lowest.
func walkQuota(read func(string) ([]byte, error), mount, p string, limit func(read func(string) ([]byte, error), dir string) (float64, bool)) (float64, bool) {
	best, ok := 0.0, false
	for p = path.Clean("/" + p); ; p = path.Dir(p) {
		if q, has := limit(read, path.Join(mount, p)); has && (!ok || q < best) {
			best, ok = q, true
		}
		if p == "/" {
			return best, ok
		}
	}
}

// quotaV1 reads cgroup v1's limit in dir: quota -1 is none.
func quotaV1(read func(string) ([]byte, error), dir string) (float64, bool) {
	q, err1 := readInt(read, path.Join(dir, "cpu.cfs_quota_us"))
	p, err2 := readInt(read, path.Join(dir, "cpu.cfs_period_us"))
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
		return 0, false
	}
	return float64(q) / float64(p), true
}

// quotaV2 reads cgroup v2's limit in dir: "max 100000" is none.
func quotaV2(read func(string) ([]byte, error), dir string) (float64, bool) {
	b, err := read(path.Join(dir, "cpu.max"))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] == "max" {
		return 0, false
	}
	q, err1 := strconv.ParseInt(f[0], 10, 64)
	p, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
		return 0, false
	}
	return float64(q) / float64(p), true
}

func readInt(read func(string) ([]byte, error), name string) (int64, error) {
	b, err := read(name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}
