package main

// The kubelet's resource metrics endpoint (/metrics/resource), the one metrics-server scrapes:
// per-container and per-pod CPU (cumulative core-seconds) and memory (working set bytes), plus
// node totals, measured from /proc.
//
// A container is its process group: the agent starts every container with Setpgid, so its pid is
// the group id and the processes it forks stay in it. This machine's cgroup v2 hierarchy has no
// cpu or memory controller (hybrid v1 mount), so pods are not put in cgroups; /proc is the
// measurement. CPU is the sum of utime+stime of /proc/<pid>/stat, the kernel's accounting of the
// whole process (all its threads, also exited ones; /proc/<pid>/schedstat would be the main thread
// only); the CPU of processes that exited is kept, so the counter only grows while the container
// runs. Memory is the sum of resident set sizes.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// userHZ is the unit of /proc/<pid>/stat's utime/stime and /proc/stat: USER_HZ, 100 on every
// Linux architecture Go supports without cgo.
const userHZ = 100

// procSample is what one process contributes to its container.
type procSample struct {
	pid, pgid int
	cpuNanos  uint64
	rssBytes  uint64
}

// parseProcStat reads pid, pgid and utime+stime (in ticks) from /proc/<pid>/stat. The command name
// (field 2) may contain spaces and parentheses, so fields are counted from the last ')'.
func parseProcStat(b []byte) (pid, pgid int, ticks uint64, err error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return 0, 0, 0, fmt.Errorf("malformed /proc stat line %q", truncate(b))
	}
	if pid, err = strconv.Atoi(strings.TrimSpace(string(b[:open]))); err != nil {
		return 0, 0, 0, fmt.Errorf("malformed pid in /proc stat line %q", truncate(b))
	}
	// After ')': state(3) ppid(4) pgrp(5) session tty tpgid flags minflt cminflt majflt cmajflt
	// utime(14) stime(15).
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 13 {
		return 0, 0, 0, fmt.Errorf("short /proc stat line %q", truncate(b))
	}
	pgid, err1 := strconv.Atoi(f[2])
	ut, err2 := strconv.ParseUint(f[11], 10, 64)
	st, err3 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return 0, 0, 0, fmt.Errorf("malformed /proc stat line %q: %w", truncate(b), err)
	}
	return pid, pgid, ut + st, nil
}

// parseStatmRSS returns the resident set size in bytes from /proc/<pid>/statm (second field, pages).
func parseStatmRSS(b []byte, pageSize int) (uint64, error) {
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("malformed statm %q", truncate(b))
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed statm %q: %w", truncate(b), err)
	}
	return pages * uint64(pageSize), nil
}

// parseNodeCPU returns the machine's busy CPU time in seconds from /proc/stat's `cpu` line: user,
// nice, system, irq, softirq and steal (idle and iowait are not usage; guest is inside user).
func parseNodeCPU(b []byte) (float64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != "cpu" {
			continue
		}
		var busy uint64
		for _, i := range []int{1, 2, 3, 6, 7, 8} {
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("malformed /proc/stat cpu line %q: %w", line, err)
			}
			busy += v
		}
		return float64(busy) / userHZ, nil
	}
	return 0, fmt.Errorf("/proc/stat has no aggregate cpu line")
}

// parseNodeMemory returns MemTotal - MemAvailable from /proc/meminfo, in bytes: the memory the
// machine cannot hand out without reclaiming, the node's working set.
func parseNodeMemory(b []byte) (uint64, error) {
	var total, avail uint64
	var haveTotal, haveAvail bool
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total, haveTotal = v*1024, true
		case "MemAvailable:":
			avail, haveAvail = v*1024, true
		}
	}
	if !haveTotal || !haveAvail || avail > total {
		return 0, fmt.Errorf("/proc/meminfo lacks MemTotal/MemAvailable")
	}
	return total - avail, nil
}

func truncate(b []byte) string {
	if len(b) > 120 {
		return string(b[:120]) + "..."
	}
	return string(b)
}

// cpuCounter makes a container's CPU counter monotonic: the CPU time of its processes that exited
// (and are no longer in /proc) is kept in `gone`.
type cpuCounter struct {
	last map[int]uint64 // pid -> cpu nanos at the previous scrape
	gone uint64
}

// update takes this scrape's per-pid CPU nanos and returns the container's cumulative CPU nanos.
func (c *cpuCounter) update(now map[int]uint64) uint64 {
	for pid, v := range c.last {
		if n, ok := now[pid]; !ok || n < v { // exited (or the pid was reused)
			c.gone += v
		}
	}
	c.last = now
	total := c.gone
	for _, v := range now {
		total += v
	}
	return total
}

// containerRef names a running container and its process group for a scrape.
type containerRef struct {
	namespace, pod, container string
	pgid                      int
	started                   time.Time
}

// containerUsage is one container's measurement.
type containerUsage struct {
	containerRef
	cpuNanos uint64
	rssBytes uint64
}

// usageByGroup sums the samples of each process group. Pure.
func usageByGroup(samples []procSample) (cpu map[int]map[int]uint64, rss map[int]uint64) {
	cpu, rss = map[int]map[int]uint64{}, map[int]uint64{}
	for _, s := range samples {
		if cpu[s.pgid] == nil {
			cpu[s.pgid] = map[int]uint64{}
		}
		cpu[s.pgid][s.pid] = s.cpuNanos
		rss[s.pgid] += s.rssBytes
	}
	return cpu, rss
}

// metricFamilies renders the measurements in the kubelet's /metrics/resource names and labels.
// Pure: metrics-server reads exactly these (container_*, pod_*, node_*, with millisecond
// timestamps).
func metricFamilies(ctrs []containerUsage, nodeCPUSeconds float64, nodeMemBytes uint64, now time.Time) []*dto.MetricFamily {
	ts := proto.Int64(now.UnixMilli())
	label := func(kv ...string) []*dto.LabelPair {
		var out []*dto.LabelPair
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, &dto.LabelPair{Name: proto.String(kv[i]), Value: proto.String(kv[i+1])})
		}
		return out
	}
	family := func(name, help string, t dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: t.Enum()}
	}
	counter := func(v float64, l []*dto.LabelPair) *dto.Metric {
		return &dto.Metric{Label: l, Counter: &dto.Counter{Value: proto.Float64(v)}, TimestampMs: ts}
	}
	gauge := func(v float64, l []*dto.LabelPair) *dto.Metric {
		return &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: proto.Float64(v)}, TimestampMs: ts}
	}

	ctrCPU := family("container_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the container in core-seconds", dto.MetricType_COUNTER)
	ctrMem := family("container_memory_working_set_bytes", "[STABLE] Current working set of the container in bytes", dto.MetricType_GAUGE)
	ctrStart := family("container_start_time_seconds", "[STABLE] Start time of the container since unix epoch in seconds", dto.MetricType_GAUGE)
	podCPU := family("pod_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds", dto.MetricType_COUNTER)
	podMem := family("pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", dto.MetricType_GAUGE)
	type podKey struct{ ns, name string }
	podCPUSum, podMemSum := map[podKey]uint64{}, map[podKey]uint64{}
	var pods []podKey
	for _, c := range ctrs {
		l := label("container", c.container, "namespace", c.namespace, "pod", c.pod)
		ctrCPU.Metric = append(ctrCPU.Metric, counter(float64(c.cpuNanos)/1e9, l))
		ctrMem.Metric = append(ctrMem.Metric, gauge(float64(c.rssBytes), l))
		// The start time carries no sample timestamp, like the kubelet's.
		ctrStart.Metric = append(ctrStart.Metric, &dto.Metric{Label: l,
			Gauge: &dto.Gauge{Value: proto.Float64(float64(c.started.UnixNano()) / 1e9)}})
		k := podKey{c.namespace, c.pod}
		if _, seen := podCPUSum[k]; !seen {
			pods = append(pods, k)
		}
		podCPUSum[k] += c.cpuNanos
		podMemSum[k] += c.rssBytes
	}
	for _, k := range pods {
		l := label("namespace", k.ns, "pod", k.name)
		podCPU.Metric = append(podCPU.Metric, counter(float64(podCPUSum[k])/1e9, l))
		podMem.Metric = append(podMem.Metric, gauge(float64(podMemSum[k]), l))
	}
	nodeCPU := family("node_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the node in core-seconds", dto.MetricType_COUNTER)
	nodeCPU.Metric = []*dto.Metric{counter(nodeCPUSeconds, nil)}
	nodeMem := family("node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes", dto.MetricType_GAUGE)
	nodeMem.Metric = []*dto.Metric{gauge(float64(nodeMemBytes), nil)}
	scrapeErr := family("scrape_error", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise", dto.MetricType_GAUGE)
	scrapeErr.Metric = []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(0)}}}
	out := []*dto.MetricFamily{ctrCPU, ctrMem, ctrStart, nodeCPU, nodeMem, podCPU, podMem, scrapeErr}
	var nonEmpty []*dto.MetricFamily
	for _, f := range out {
		if len(f.Metric) > 0 {
			nonEmpty = append(nonEmpty, f)
		}
	}
	return nonEmpty
}

// readProcSamples reads every process's group, CPU and RSS from procRoot (normally /proc).
// Processes that exit while being read are skipped.
func readProcSamples(procRoot string) ([]procSample, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", procRoot, err)
	}
	pageSize := os.Getpagesize()
	var out []procSample
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		pid, pgid, ticks, err := parseProcStat(b)
		if err != nil {
			continue
		}
		s := procSample{pid: pid, pgid: pgid, cpuNanos: ticks * (1e9 / userHZ)}
		if b, err := os.ReadFile(filepath.Join(dir, "statm")); err == nil {
			s.rssBytes, _ = parseStatmRSS(b, pageSize)
		}
		out = append(out, s)
	}
	return out, nil
}

// resourceMetrics measures the node's running containers; the provider keeps one.
type resourceMetrics struct {
	procRoot string
	mu       sync.Mutex
	counters map[int]*cpuCounter // by process group (= the container process's pid)
}

func newResourceMetrics(procRoot string) *resourceMetrics {
	return &resourceMetrics{procRoot: procRoot, counters: map[int]*cpuCounter{}}
}

// collect measures the given containers and the node, now.
func (m *resourceMetrics) collect(refs []containerRef) ([]*dto.MetricFamily, error) {
	samples, err := readProcSamples(m.procRoot)
	if err != nil {
		return nil, err
	}
	stat, err := os.ReadFile(filepath.Join(m.procRoot, "stat"))
	if err != nil {
		return nil, err
	}
	nodeCPU, err := parseNodeCPU(stat)
	if err != nil {
		return nil, err
	}
	meminfo, err := os.ReadFile(filepath.Join(m.procRoot, "meminfo"))
	if err != nil {
		return nil, err
	}
	nodeMem, err := parseNodeMemory(meminfo)
	if err != nil {
		return nil, err
	}
	cpu, rss := usageByGroup(samples)
	m.mu.Lock()
	defer m.mu.Unlock()
	live := map[int]bool{}
	var usage []containerUsage
	for _, r := range refs {
		if _, ok := cpu[r.pgid]; !ok {
			continue // exited between the snapshot and the read
		}
		live[r.pgid] = true
		c := m.counters[r.pgid]
		if c == nil {
			c = &cpuCounter{}
			m.counters[r.pgid] = c
		}
		usage = append(usage, containerUsage{containerRef: r, cpuNanos: c.update(cpu[r.pgid]), rssBytes: rss[r.pgid]})
	}
	for g := range m.counters {
		if !live[g] {
			delete(m.counters, g)
		}
	}
	sort.Slice(usage, func(i, j int) bool {
		a, b := usage[i], usage[j]
		if a.namespace != b.namespace {
			return a.namespace < b.namespace
		}
		if a.pod != b.pod {
			return a.pod < b.pod
		}
		return a.container < b.container
	})
	return metricFamilies(usage, nodeCPU, nodeMem, time.Now()), nil
}

// runningContainers lists the containers with a live process (regular containers, native sidecars
// and a running init container).
func (p *provider) runningContainers() []containerRef {
	p.mu.Lock()
	defer p.mu.Unlock()
	var refs []containerRef
	for _, pr := range p.pods {
		for _, cr := range append(append([]*ctrRun{}, pr.inits...), pr.ctrs...) {
			if cr.pid <= 0 || cr.status.State.Running == nil {
				continue
			}
			refs = append(refs, containerRef{namespace: pr.pod.Namespace, pod: pr.pod.Name, container: cr.c.Name,
				pgid: cr.pid, started: cr.status.State.Running.StartedAt.Time})
		}
	}
	return refs
}

// metricsResource is virtual-kubelet's GetMetricsResource hook.
func (p *provider) metricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return p.metrics.collect(p.runningContainers())
}
