package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// imageEntry maps an image repository to a local binary (see hack/cluster/images.yaml).
type imageEntry struct {
	Name   string   `json:"name"`
	Binary string   `json:"binary"`
	Args   []string `json:"args"`
	Host   bool     `json:"host"`
}

type imageMap struct {
	Images []imageEntry `json:"images"`
}

// loadImages reads the mapping file; ${REPO}, ${CARGO_TARGET_DIR}, ${NODEAGENT_BIN} and the extra
// variables (--image-var, e.g. METRICS_SERVER_BIN) are expanded in `binary`.
func loadImages(file, repo, targetDir string, extra map[string]string) (*imageMap, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var m imageMap
	if err := yaml.UnmarshalStrict(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	vars := map[string]string{"REPO": repo, "CARGO_TARGET_DIR": targetDir, "NODEAGENT_BIN": filepath.Dir(self)}
	for k, v := range extra {
		vars[k] = v
	}
	for i := range m.Images {
		e := &m.Images[i]
		if e.Name == "" || (e.Binary == "" && !e.Host) {
			return nil, fmt.Errorf("%s: entry %d needs name and binary (or host: true)", file, i+1)
		}
		e.Binary = os.Expand(e.Binary, func(k string) string { return vars[k] })
	}
	return &m, nil
}

// repository strips the tag and digest: "ghcr.io/kartflow/worker:0.1@sha256:.." -> "ghcr.io/kartflow/worker".
func repository(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// lookup finds the entry whose name equals the image's repository or is a path suffix of it, so
// "kartflow/worker" matches "kartflow/worker:dev" and "ghcr.io/kartflow/worker:1.0".
func (m *imageMap) lookup(image string) (*imageEntry, error) {
	repo := repository(image)
	for i := range m.Images {
		e := &m.Images[i]
		if repo == e.Name || strings.HasSuffix(repo, "/"+e.Name) {
			if !e.Host {
				if st, err := os.Stat(e.Binary); err != nil || st.IsDir() {
					return nil, fmt.Errorf("image %s maps to %s, which is not built", image, e.Binary)
				}
			}
			return e, nil
		}
	}
	return nil, fmt.Errorf("image %s is not in the process node's image map (hack/cluster/images.yaml)", image)
}
