package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
)

// shimSpec is what the agent hands to `nodeagent shim SPECFILE`: the process to exec and the bind
// mounts to set up first. The agent starts the shim with CLONE_NEWNS and / made rprivate (Go's
// SysProcAttr.Unshareflags does both), so the mounts are visible to this process tree only and
// vanish with it.
type shimSpec struct {
	Path   string      `json:"path"`
	Args   []string    `json:"args"` // argv, including argv[0]
	Env    []string    `json:"env"`
	Dir    string      `json:"dir"`
	Mounts []shimMount `json:"mounts"`
}

type shimMount struct {
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	ReadOnly bool   `json:"readOnly"`
}

// runShim never returns on success: it execs the container's command.
func runShim(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: nodeagent shim SPECFILE")
	}
	raw, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	_ = os.Remove(args[0]) // written for this start only
	var s shimSpec
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("parsing %s: %w", args[0], err)
	}
	orderMounts(s.Mounts)
	for _, m := range s.Mounts {
		if err := bindMount(m); err != nil {
			return err
		}
	}
	if s.Dir != "" {
		if err := os.Chdir(s.Dir); err != nil {
			return fmt.Errorf("working directory %s: %w", s.Dir, err)
		}
	}
	err = syscall.Exec(s.Path, s.Args, s.Env)
	return fmt.Errorf("exec %s: %w", s.Path, err)
}

// orderMounts moves mounts that cover another mount's source to the end: an emptyDir on /tmp
// would otherwise hide the agent's pod state under /tmp before those volumes are mounted.
func orderMounts(ms []shimMount) {
	covers := func(m shimMount) bool {
		for _, o := range ms {
			if o.Src != m.Src && (o.Src == m.Dst || strings.HasPrefix(o.Src, m.Dst+"/")) {
				return true
			}
		}
		return false
	}
	sort.SliceStable(ms, func(i, j int) bool { return !covers(ms[i]) && covers(ms[j]) })
}

func bindMount(m shimMount) error {
	st, err := os.Stat(m.Src)
	if err != nil {
		return fmt.Errorf("mount source: %w", err)
	}
	// The agent creates missing mount points and removes them later (mountpoints.go); this is
	// only a fallback for exec probes and hooks started without it.
	if st.IsDir() {
		err = os.MkdirAll(m.Dst, 0o755)
	} else if _, serr := os.Stat(m.Dst); serr != nil {
		if err = os.MkdirAll(filepath.Dir(m.Dst), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(m.Dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", m.Dst, err)
	}
	if err := syscall.Mount(m.Src, m.Dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", m.Src, m.Dst, err)
	}
	if m.ReadOnly {
		if err := syscall.Mount("", m.Dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("read-only remount of %s: %w", m.Dst, err)
		}
	}
	return nil
}

// Pdeathsig fires when the *thread* that started the child exits, not the process. Go may end
// threads (e.g. one a goroutine locked and left), so all pod processes are started from one
// goroutine locked to its thread for the agent's lifetime.
var starter = make(chan func())

func init() {
	go func() {
		runtime.LockOSThread()
		for f := range starter {
			f()
		}
	}()
}

// startPinned is cmd.Start on the starter thread.
func startPinned(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	starter <- func() { done <- cmd.Start() }
	return <-done
}
