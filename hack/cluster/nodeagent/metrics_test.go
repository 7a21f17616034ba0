package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
)

func TestParseProcStat(t *testing.T) {
	for _, tc := range []struct {
		in        string
		pid, pgid int
		ticks     uint64
		wantErr   bool
	}{
		{in: "4242 (kartflow-worker) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 9 0 1000 0 0",
			pid: 4242, pgid: 4242, ticks: 200},
		// The command name may hold spaces and parentheses.
		{in: "77 (a (b) c) R 5 70 70 0 -1 0 0 0 0 0 3 4 0 0", pid: 77, pgid: 70, ticks: 7},
		{in: "garbage", wantErr: true},
		{in: "12 (x) S 1 2", wantErr: true},
	} {
		pid, pgid, ticks, err := parseProcStat([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("parseProcStat(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && (pid != tc.pid || pgid != tc.pgid || ticks != tc.ticks) {
			t.Errorf("parseProcStat(%q) = %d %d %d, want %d %d %d", tc.in, pid, pgid, ticks, tc.pid, tc.pgid, tc.ticks)
		}
	}
}

func TestParseNodeAndProcessFiles(t *testing.T) {
	cpu, err := parseNodeCPU([]byte("cpu  1000 50 250 9000 70 0 30 20 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"))
	if err != nil || cpu != 13.5 { // (1000+50+250+0+30+20) / 100
		t.Errorf("parseNodeCPU = %v, %v; want 13.5", cpu, err)
	}
	if _, err := parseNodeCPU([]byte("intr 1 2 3\n")); err == nil {
		t.Error("parseNodeCPU without a cpu line: want an error")
	}
	mem, err := parseNodeMemory([]byte("MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:   400 kB\n"))
	if err != nil || mem != 600*1024 {
		t.Errorf("parseNodeMemory = %v, %v; want %d", mem, err, 600*1024)
	}
	if _, err := parseNodeMemory([]byte("MemTotal: 1000 kB\n")); err == nil {
		t.Error("parseNodeMemory without MemAvailable: want an error")
	}
	rss, err := parseStatmRSS([]byte("765 405 376 5 0 123 0\n"), 4096)
	if err != nil || rss != 405*4096 {
		t.Errorf("parseStatmRSS = %v, %v", rss, err)
	}
}

func TestCPUCounterKeepsExitedProcesses(t *testing.T) {
	var c cpuCounter
	steps := []struct {
		now  map[int]uint64
		want uint64
	}{
		{map[int]uint64{10: 100, 11: 50}, 150},
		{map[int]uint64{10: 200, 11: 70}, 270},
		{map[int]uint64{10: 300}, 370},        // 11 exited with 70
		{map[int]uint64{10: 310, 11: 5}, 385}, // pid 11 reused: a new process
		{map[int]uint64{}, 385},               // all gone: the counter does not drop
		{map[int]uint64{12: 1}, 386},
	}
	for i, s := range steps {
		if got := c.update(s.now); got != s.want {
			t.Errorf("step %d: update = %d, want %d", i, got, s.want)
		}
	}
}

// The rendered text must carry what metrics-server's decoder reads: container_* with container,
// namespace and pod labels and a timestamp, pod_* sums, node_* totals.
func TestMetricFamiliesText(t *testing.T) {
	now := time.UnixMilli(1700000000123)
	start := time.Unix(1699999000, 0)
	fams := metricFamilies([]containerUsage{
		{containerRef{"ns1", "web-0", "app", 10, start}, 1_500_000_000, 4096},
		{containerRef{"ns1", "web-0", "sidecar", 11, start}, 500_000_000, 1024},
		{containerRef{"ns2", "db-0", "db", 12, start}, 250_000_000, 2048},
	}, 42.5, 1<<30, now)
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	text := buf.String()
	for _, want := range []string{
		`container_cpu_usage_seconds_total{container="app",namespace="ns1",pod="web-0"} 1.5 1700000000123`,
		`container_memory_working_set_bytes{container="sidecar",namespace="ns1",pod="web-0"} 1024 1700000000123`,
		`container_start_time_seconds{container="db",namespace="ns2",pod="db-0"} 1.699999e+09`,
		`pod_cpu_usage_seconds_total{namespace="ns1",pod="web-0"} 2 1700000000123`,
		`pod_memory_working_set_bytes{namespace="ns2",pod="db-0"} 2048 1700000000123`,
		`node_cpu_usage_seconds_total 42.5 1700000000123`,
		`node_memory_working_set_bytes 1.073741824e+09 1700000000123`,
		`scrape_error 0`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("missing line %q in:\n%s", want, text)
		}
	}
}

// collect over a fake /proc: only the given process groups count, and their processes are summed.
func TestCollectFromProcTree(t *testing.T) {
	root := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("stat", "cpu  100 0 100 800 0 0 0 0 0 0\n")
	write("meminfo", "MemTotal: 2000 kB\nMemAvailable: 500 kB\n")
	// utime and stime in ticks of 10 ms.
	proc := func(pid, pgid, utime, stime, rssPages string) {
		write(pid+"/stat", pid+" (p) S 1 "+pgid+" 1 0 -1 0 0 0 0 0 "+utime+" "+stime+" 0 0")
		// The main thread's schedstat is not the process's CPU: it must not be read.
		write(pid+"/schedstat", "7 0 0")
		write(pid+"/statm", "10 "+rssPages+" 0 0 0 0 0")
	}
	proc("100", "100", "150", "50", "2") // the container's main process: 2 s
	proc("101", "100", "60", "40", "1")  // its child: 1 s
	proc("200", "200", "900", "0", "50") // not a container
	write("self/stat", "not a pid dir")
	m := newResourceMetrics(root)
	fams, err := m.collect([]containerRef{{"ns", "pod-a", "c", 100, time.Unix(1, 0)}, {"ns", "gone", "c", 300, time.Unix(1, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, mt := range f.Metric {
			if mt.Counter != nil {
				got[f.GetName()] = mt.Counter.GetValue()
			} else {
				got[f.GetName()] = mt.Gauge.GetValue()
			}
		}
	}
	page := float64(os.Getpagesize())
	want := map[string]float64{
		"container_cpu_usage_seconds_total":  3,
		"container_memory_working_set_bytes": 3 * page,
		"pod_cpu_usage_seconds_total":        3,
		"node_cpu_usage_seconds_total":       2,
		"node_memory_working_set_bytes":      1500 * 1024,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

func TestKubeletAttributes(t *testing.T) {
	for _, tc := range []struct{ method, path, verb, sub string }{
		{http.MethodGet, "/metrics/resource", "get", "metrics"},
		{http.MethodGet, "/metrics", "get", "metrics"},
		{http.MethodGet, "/stats/summary", "get", "stats"},
		{http.MethodGet, "/containerLogs/ns/pod/c", "get", "proxy"},
		{http.MethodPost, "/exec/ns/pod/c", "create", "proxy"},
		{http.MethodGet, "/metricsfoo", "get", "proxy"},
	} {
		verb, sub := kubeletAttributes(tc.method, tc.path)
		if verb != tc.verb || sub != tc.sub {
			t.Errorf("kubeletAttributes(%s %s) = %s %s, want %s %s", tc.method, tc.path, verb, sub, tc.verb, tc.sub)
		}
	}
}
