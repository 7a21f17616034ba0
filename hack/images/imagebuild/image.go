package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Media types of the OCI image spec.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Spec is what one image is made of.
type Spec struct {
	Name, Tag  string
	Layers     []string // directories, bottom layer first
	Entrypoint []string
	User       string
	WorkingDir string
	Env        []string
	Labels     map[string]string
	Owners     map[string][2]int // path inside the layer (no leading slash) -> uid, gid
	Created    time.Time
}

// Summary is what Build reports.
type Summary struct {
	Image             string `json:"image"`
	Digest            string `json:"digest"`
	Archive           string `json:"archive"`
	CompressedBytes   int64  `json:"compressedBytes"`
	UncompressedBytes int64  `json:"uncompressedBytes"`
	Layers            int    `json:"layers"`
}

func (s Summary) JSON() string {
	b, _ := json.Marshal(s)
	return string(b)
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type blob struct {
	digest string
	data   []byte
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: data}
}

func (b blob) path() string { return "blobs/sha256/" + strings.TrimPrefix(b.digest, "sha256:") }

func (b blob) descriptor(mediaType string) descriptor {
	return descriptor{MediaType: mediaType, Digest: b.digest, Size: int64(len(b.data))}
}

// Build writes the image archive for spec to out.
func Build(spec Spec, out string) (Summary, error) {
	var layers []blob
	var diffIDs []string
	var history []map[string]string
	var uncompressed int64
	for _, dir := range spec.Layers {
		raw, err := layerTar(dir, spec.Created, spec.Owners)
		if err != nil {
			return Summary{}, err
		}
		gz, err := gzipBytes(raw)
		if err != nil {
			return Summary{}, err
		}
		layers = append(layers, newBlob(gz))
		diffIDs = append(diffIDs, newBlob(raw).digest)
		uncompressed += int64(len(raw))
		history = append(history, map[string]string{
			"created":    spec.Created.Format(time.RFC3339),
			"created_by": "imagebuild -layer " + filepath.Base(filepath.Clean(dir)),
		})
	}
	imageConfig := map[string]any{"WorkingDir": spec.WorkingDir}
	if spec.User != "" {
		imageConfig["User"] = spec.User
	}
	if len(spec.Entrypoint) > 0 {
		imageConfig["Entrypoint"] = spec.Entrypoint
	}
	if len(spec.Env) > 0 {
		imageConfig["Env"] = spec.Env
	}
	if len(spec.Labels) > 0 {
		imageConfig["Labels"] = spec.Labels
	}
	// encoding/json writes map keys sorted, so the config's bytes depend only on its content.
	config, err := json.Marshal(map[string]any{
		"created":      spec.Created.Format(time.RFC3339),
		"architecture": "amd64",
		"os":           "linux",
		"config":       imageConfig,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
		"history":      history,
	})
	if err != nil {
		return Summary{}, err
	}
	configBlob := newBlob(config)
	layerDescs := make([]descriptor, len(layers))
	for i, l := range layers {
		layerDescs[i] = l.descriptor(mediaLayer)
	}
	manifest, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}{2, mediaManifest, configBlob.descriptor(mediaConfig), layerDescs})
	if err != nil {
		return Summary{}, err
	}
	manifestBlob := newBlob(manifest)
	ref := spec.Name + ":" + spec.Tag
	entry := manifestBlob.descriptor(mediaManifest)
	// containerd (kind, k3d) names an imported image by io.containerd.image.name; OCI tools
	// read ref.name. Both as docker save writes them.
	entry.Annotations = map[string]string{
		"io.containerd.image.name":          fullyQualified(ref),
		"org.opencontainers.image.ref.name": spec.Tag,
	}
	index, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}{2, mediaIndex, []descriptor{entry}})
	if err != nil {
		return Summary{}, err
	}
	layerPaths := make([]string, len(layers))
	for i, l := range layers {
		layerPaths[i] = l.path()
	}
	dockerManifest, err := json.Marshal([]map[string]any{{
		"Config":   configBlob.path(),
		"RepoTags": []string{ref},
		"Layers":   layerPaths,
	}})
	if err != nil {
		return Summary{}, err
	}

	files := map[string][]byte{
		"oci-layout":    []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json":    index,
		"manifest.json": dockerManifest,
	}
	for _, b := range append([]blob{configBlob, manifestBlob}, layers...) {
		files[b.path()] = b.data
	}
	var compressed int64
	for _, l := range layers {
		compressed += int64(len(l.data))
	}
	compressed += int64(len(config)) + int64(len(manifest))
	if err := writeArchive(out, files, spec.Created); err != nil {
		return Summary{}, err
	}
	return Summary{
		Image:             ref,
		Digest:            manifestBlob.digest,
		Archive:           out,
		CompressedBytes:   compressed,
		UncompressedBytes: uncompressed,
		Layers:            len(layers),
	}, nil
}

// fullyQualified adds docker.io/ to a reference without a registry, as containerd expects.
func fullyQualified(ref string) string {
	first, _, found := strings.Cut(ref, "/")
	if found && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return ref
	}
	if !found {
		return "docker.io/library/" + ref
	}
	return "docker.io/" + ref
}

// layerTar is the tar of dir's tree: lexical order, times set to created, owner root (or
// owners[path]), no user or group names, so the bytes depend only on the tree's content and
// modes.
func layerTar(dir string, created time.Time, owners map[string][2]int) ([]byte, error) {
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", dir, err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("layer %s is not a directory", dir)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// WalkDir visits entries in lexical order.
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if o, ok := owners[rel]; ok {
			hdr.Uid, hdr.Gid = o[0], o[1]
		}
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = created, time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gzipBytes compresses with a header that carries no name and no time.
func gzipBytes(raw []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(raw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeArchive writes files (and their directories) as a tar, sorted by name, atomically.
func writeArchive(out string, files map[string][]byte, created time.Time) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".imagebuild-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	tw := tar.NewWriter(tmp)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: created, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	for _, n := range names {
		data := files[n]
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(data)), ModTime: created, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}
