package main

import (
	"io/fs"
	"runtime"
	"testing"
)

// TestCPUQuota reads the CPU limit of a process from made-up /proc and
// cgroup files: cgroup v1 (this machine's layout), v2, a container whose
// mount root is its own cgroup, a parent's lower limit, and no limit.
func TestCPUQuota(t *testing.T) {
	const v1Mounts = `25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	const v2Mounts = `30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
`
	for _, c := range []struct {
		name  string
		files map[string]string
		want  float64
		ok    bool
	}{{
		name: "v1 quota",
		files: map[string]string{
			"/proc/self/cgroup":                                  "2:cpuacct:/\n1:cpu:/drainbench-n1\n0::/\n",
			"/proc/self/mountinfo":                               v1Mounts,
			"/sys/fs/cgroup/cpu/cpu.cfs_quota_us":                "-1\n",
			"/sys/fs/cgroup/cpu/cpu.cfs_period_us":               "100000\n",
			"/sys/fs/cgroup/cpu/drainbench-n1/cpu.cfs_quota_us":  "20000\n",
			"/sys/fs/cgroup/cpu/drainbench-n1/cpu.cfs_period_us": "100000\n",
		},
		want: 0.2, ok: true,
	}, {
		name: "v1 none",
		files: map[string]string{
			"/proc/self/cgroup":                    "1:cpu:/\n0::/\n",
			"/proc/self/mountinfo":                 v1Mounts,
			"/sys/fs/cgroup/cpu/cpu.cfs_quota_us":  "-1\n",
			"/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
		},
	}, {
		name: "v1 cpu,cpuacct, the parent lower",
		files: map[string]string{
			"/proc/self/cgroup":         "3:cpu,cpuacct:/a/b\n",
			"/proc/self/mountinfo":      "26 25 0:23 / /cg rw - cgroup cgroup rw,cpu,cpuacct\n",
			"/cg/a/cpu.cfs_quota_us":    "150000",
			"/cg/a/cpu.cfs_period_us":   "100000",
			"/cg/a/b/cpu.cfs_quota_us":  "300000",
			"/cg/a/b/cpu.cfs_period_us": "100000",
		},
		want: 1.5, ok: true,
	}, {
		name: "v2 quota",
		files: map[string]string{
			"/proc/self/cgroup":    "0::/system.slice/flotilla.service\n",
			"/proc/self/mountinfo": v2Mounts,
			"/sys/fs/cgroup/system.slice/flotilla.service/cpu.max": "250000 100000\n",
			"/sys/fs/cgroup/system.slice/cpu.max":                  "max 100000\n",
		},
		want: 2.5, ok: true,
	}, {
		name: "v2 container: the mount's root is the process's cgroup",
		files: map[string]string{
			"/proc/self/cgroup":      "0::/kubepods/pod1/c1\n",
			"/proc/self/mountinfo":   "30 24 0:26 /kubepods/pod1/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			"/sys/fs/cgroup/cpu.max": "50000 100000\n",
		},
		want: 0.5, ok: true,
	}, {
		name: "v2 no limit",
		files: map[string]string{
			"/proc/self/cgroup":                 "0::/user.slice\n",
			"/proc/self/mountinfo":              v2Mounts,
			"/sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
		},
	}, {
		name: "v2 unreadable",
		files: map[string]string{
			"/proc/self/cgroup":        "0::/x\n",
			"/proc/self/mountinfo":     v2Mounts,
			"/sys/fs/cgroup/x/cpu.max": "lots\n",
		},
	}, {
		name: "v2, the first mount not the process's: the next one",
		files: map[string]string{
			"/proc/self/cgroup": "0::/app\n",
			"/proc/self/mountinfo": "30 24 0:26 /other /mnt/other rw - cgroup2 cgroup2 rw\n" +
				"31 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			"/mnt/other/app/cpu.max":     "10000 100000\n",
			"/sys/fs/cgroup/app/cpu.max": "300000 100000\n",
		},
		want: 3, ok: true,
	}, {
		name: "v2, a mount point with a space (escaped in mountinfo)",
		files: map[string]string{
			"/proc/self/cgroup":       "0::/app\n",
			"/proc/self/mountinfo":    `30 24 0:26 / /my\040cgroups rw - cgroup2 cgroup2 rw` + "\n",
			"/my cgroups/app/cpu.max": "100000 100000\n",
		},
		want: 1, ok: true,
	}, {
		name: "v2, a cgroup outside this namespace",
		files: map[string]string{
			"/proc/self/cgroup":           "0::/../../init\n",
			"/proc/self/mountinfo":        v2Mounts,
			"/sys/fs/cgroup/init/cpu.max": "10000 100000\n",
		},
	}, {
		name:  "no /proc",
		files: map[string]string{},
	}} {
		t.Run(c.name, func(t *testing.T) {
			read := func(name string) ([]byte, error) {
				if s, ok := c.files[name]; ok {
					return []byte(s), nil
				}
				return nil, fs.ErrNotExist
			}
			got, ok := cpuQuota(read)
			if ok != c.ok || got != c.want {
				t.Fatalf("cpuQuota = %v, %v; want %v, %v", got, ok, c.want, c.ok)
			}
			w, _ := quotaWorkers(read)
			if c.ok && w != workersFor(c.want, runtime.GOMAXPROCS(0)) {
				t.Errorf("quotaWorkers = %d, want workersFor(%v)", w, c.want)
			}
			switch {
			case !c.ok && w != 0:
				t.Errorf("quotaWorkers = %d without a quota, want 0 (the engine's default)", w)
			case c.ok && (w < 1 || w > runtime.GOMAXPROCS(0)):
				t.Errorf("quotaWorkers = %d, want 1..GOMAXPROCS (%d)", w, runtime.GOMAXPROCS(0))
			}
		})
	}
}

// TestWorkersFor: the quota rounded up, at least 1, at most GOMAXPROCS.
func TestWorkersFor(t *testing.T) {
	for _, c := range []struct {
		q     float64
		procs int
		want  int
	}{{0.01, 4, 1}, {0.2, 4, 1}, {1, 4, 1}, {1.01, 4, 2}, {2.5, 4, 3}, {8, 4, 4}, {3, 2, 2}} {
		if got := workersFor(c.q, c.procs); got != c.want {
			t.Errorf("workersFor(%v, %d) = %d, want %d", c.q, c.procs, got, c.want)
		}
	}
}
