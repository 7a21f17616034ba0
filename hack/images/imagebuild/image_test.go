package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func tree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "usr/local/bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "home/nonroot"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "usr/local/bin/app"), []byte("#!binary"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "etc-passwd"), []byte("root:x:0:0::/:/x\n"), 0o644))
	must(os.Symlink("usr/local/bin/app", filepath.Join(dir, "app")))
	return dir
}

func spec(layer string, created time.Time) Spec {
	return Spec{
		Name: "kartflow/worker", Tag: "1.2.3", Layers: []string{layer},
		Entrypoint: []string{"/usr/local/bin/app"}, User: "65532:65532", WorkingDir: "/",
		Labels:  map[string]string{"org.opencontainers.image.version": "1.2.3", "org.opencontainers.image.revision": "abc"},
		Owners:  map[string][2]int{"home/nonroot": {65532, 65532}},
		Created: created,
	}
}

// readArchive returns the archive's files by name.
func readArchive(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
}

func TestSameInputsGiveTheSameBytes(t *testing.T) {
	dir := tree(t)
	created := time.Unix(1767225600, 0).UTC()
	out := t.TempDir()
	a, err := Build(spec(dir, created), filepath.Join(out, "a.tar"))
	if err != nil {
		t.Fatal(err)
	}
	// Touch every file: modification times must not reach the image.
	later := time.Now().Add(time.Hour)
	_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, later, later) })
	b, err := Build(spec(dir, created), filepath.Join(out, "b.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest != b.Digest {
		t.Fatalf("digests differ: %s vs %s", a.Digest, b.Digest)
	}
	ab, _ := os.ReadFile(filepath.Join(out, "a.tar"))
	bb, _ := os.ReadFile(filepath.Join(out, "b.tar"))
	if !bytes.Equal(ab, bb) {
		t.Fatal("archives differ although the digests agree")
	}
	c, err := Build(spec(dir, created.Add(time.Second)), filepath.Join(out, "c.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Digest == a.Digest {
		t.Fatal("a different creation time gave the same digest")
	}
}

func TestArchiveIsAnOCILayoutAndADockerArchive(t *testing.T) {
	dir := tree(t)
	created := time.Unix(1767225600, 0).UTC()
	path := filepath.Join(t.TempDir(), "img.tar")
	sum, err := Build(spec(dir, created), path)
	if err != nil {
		t.Fatal(err)
	}
	files := readArchive(t, path)
	// Every blob is stored under its own digest.
	for name, data := range files {
		if len(name) > len("blobs/sha256/") && name[:13] == "blobs/sha256/" {
			s := sha256.Sum256(data)
			if hex.EncodeToString(s[:]) != name[13:] {
				t.Fatalf("%s does not hash to its name", name)
			}
		}
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	m := index.Manifests[0]
	if m.Digest != sum.Digest || m.Annotations["io.containerd.image.name"] != "docker.io/kartflow/worker:1.2.3" ||
		m.Annotations["org.opencontainers.image.ref.name"] != "1.2.3" {
		t.Fatalf("index entry %+v, summary digest %s", m, sum.Digest)
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(files["blobs/sha256/"+m.Digest[7:]], &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		Created string `json:"created"`
		Config  struct {
			User       string
			Entrypoint []string
			Labels     map[string]string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(files["blobs/sha256/"+manifest.Config.Digest[7:]], &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "65532:65532" || config.Config.Entrypoint[0] != "/usr/local/bin/app" ||
		config.Config.Labels["org.opencontainers.image.revision"] != "abc" || config.Created != "2026-01-01T00:00:00Z" {
		t.Fatalf("config %+v", config)
	}
	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &docker); err != nil || len(docker) != 1 ||
		docker[0].RepoTags[0] != "kartflow/worker:1.2.3" || docker[0].Config != "blobs/sha256/"+manifest.Config.Digest[7:] {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"])
	}
	// The layer: diff id is the uncompressed digest; entries owned by root except the owner
	// override, with the creation time.
	gz := files["blobs/sha256/"+manifest.Layers[0].Digest[7:]]
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	s := sha256.Sum256(raw)
	if "sha256:"+hex.EncodeToString(s[:]) != config.RootFS.DiffIDs[0] {
		t.Fatal("diff id is not the uncompressed layer's digest")
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	seen := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = h
		if !h.ModTime.Equal(created) {
			t.Fatalf("%s has time %v", h.Name, h.ModTime)
		}
	}
	if h := seen["home/nonroot/"]; h == nil || h.Uid != 65532 || h.Mode&0o777 != 0o700 {
		t.Fatalf("home/nonroot/: %+v", h)
	}
	if h := seen["usr/local/bin/app"]; h == nil || h.Uid != 0 || h.Mode&0o111 == 0 {
		t.Fatalf("usr/local/bin/app: %+v", h)
	}
	if h := seen["app"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "usr/local/bin/app" {
		t.Fatalf("app symlink: %+v", h)
	}
}

func TestFullyQualified(t *testing.T) {
	for in, want := range map[string]string{
		"kartflow/worker:1":           "docker.io/kartflow/worker:1",
		"busybox:1":                   "docker.io/library/busybox:1",
		"127.0.0.1:5000/kartflow/w:1": "127.0.0.1:5000/kartflow/w:1",
		"ghcr.io/kartflow/worker:1":   "ghcr.io/kartflow/worker:1",
		"localhost/kartflow/worker:1": "localhost/kartflow/worker:1",
	} {
		if got := fullyQualified(in); got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}
