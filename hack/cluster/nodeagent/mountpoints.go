package main

import (
	"os"
	"path/filepath"
	"sort"
)

// Bind mounts need existing mount points, and creating one is a change to the host's (shared)
// file system even though the mount itself is private. The agent creates missing ones before
// starting a container and removes them when the last pod using them is gone, so test runs do
// not leave /etc/foo or /var/run/secrets/... directories behind (unless the agent is killed).

// ensureMountPoints creates the missing mount points of spec (directories, or empty files for
// file sources), recording each created path for pr.
func (p *provider) ensureMountPoints(pr *podRun, spec *shimSpec) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range spec.Mounts {
		st, err := os.Stat(m.Src)
		if err != nil {
			return err
		}
		dst := filepath.Clean(m.Dst)
		if _, err := os.Lstat(dst); err == nil {
			// Maybe one we created for another pod: hold it and its ancestors, so they go only
			// after both pods.
			for d := dst; d != "/" && d != "."; d = filepath.Dir(d) {
				p.holdLocked(pr, d)
			}
			continue
		}
		// Create the missing ancestors top-down, holding each one we create.
		var missing []string
		for d := filepath.Dir(dst); d != "/" && d != "."; d = filepath.Dir(d) {
			if _, err := os.Lstat(d); err == nil {
				break
			}
			missing = append([]string{d}, missing...)
		}
		for _, d := range missing {
			if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
				return err
			}
			p.mountPoints[d]++
			pr.created = append(pr.created, d)
		}
		if st.IsDir() {
			err = os.Mkdir(dst, 0o755)
		} else {
			var f *os.File
			if f, err = os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
				err = f.Close()
			}
		}
		if err != nil && !os.IsExist(err) {
			return err
		}
		p.mountPoints[dst]++
		pr.created = append(pr.created, dst)
		for d := filepath.Dir(dst); d != "/" && d != "."; d = filepath.Dir(d) {
			p.holdLocked(pr, d) // existing ancestors created for another pod
		}
	}
	return nil
}

// holdLocked adds a reference from pr to path if the agent created path (for another pod).
func (p *provider) holdLocked(pr *podRun, path string) {
	if p.mountPoints[path] == 0 {
		return
	}
	for _, c := range pr.created {
		if c == path {
			return
		}
	}
	p.mountPoints[path]++
	pr.created = append(pr.created, path)
}

// releaseMountPointsLocked drops pr's references, deepest first, and removes mount points no pod
// uses any more (only while empty: os.Remove never deletes content).
func (p *provider) releaseMountPointsLocked(pr *podRun) {
	sort.Slice(pr.created, func(i, j int) bool { return len(pr.created[i]) > len(pr.created[j]) })
	for _, path := range pr.created {
		if p.mountPoints[path]--; p.mountPoints[path] <= 0 {
			delete(p.mountPoints, path)
			_ = os.Remove(path)
		}
	}
	pr.created = nil
}
