package main

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// builderSuite and builderMirror are the Debian release and mirror the container test's
// builder image is made from when no golang image can be pulled: the builder needs git
// beside Go, so that the build stamps the revision.
const (
	builderSuite  = "bookworm"
	builderMirror = "http://deb.debian.org/debian"
)

// TestContainer_ImageServesTheStream builds the image from Containerfile with podman, as
// a user does, and runs its binary from the image's own root filesystem (podman image
// mount, then chroot as the image's user), because running containers is not possible on
// every CI machine: the image holds the binary and its user alone, and the binary prints
// the checkout's revision, serves /healthz and /readyz, streams /sse to a real client and
// exits 0 on SIGTERM.
func TestContainer_ImageServesTheStream(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the container image with podman, up to a few minutes: run without -short")
	}
	podman := requireTool(t, "", "podman", "podman")
	chroot := requireTool(t, "", "chroot", "coreutils")
	requireRoot(t, "podman image mount and chroot")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	builder := containerBuilder(t, ctx, podman)
	src, revision := containerContext(t)
	// The modules come from this machine's module cache (GOPROXY=off in the build), so
	// the build needs no network; the build cache is shared to keep it quick.
	runTool(t, ctx, "", "go", "mod", "download")
	modcache := strings.TrimSpace(runTool(t, ctx, "", "go", "env", "GOMODCACHE"))
	gocache := strings.TrimSpace(runTool(t, ctx, "", "go", "env", "GOCACHE"))
	image := "localhost/sse-dashboard:test-" + strconv.Itoa(os.Getpid())
	// --isolation=chroot: the build's RUN steps need no OCI runtime or cgroups of their
	// own, which not every CI machine offers.
	runTool(t, ctx, src, podman, "build", "--isolation=chroot", "--layers=false",
		"--build-arg", "GO_IMAGE="+builder, "--build-arg", "GOPROXY=off",
		"-v", modcache+":/go/pkg/mod", "-v", gocache+":/cache/go-build",
		"-t", image, ".")
	t.Cleanup(func() { exec.Command(podman, "rmi", "--force", image).Run() })

	var config struct {
		User       string
		Entrypoint []string
	}
	inspect := runTool(t, ctx, "", podman, "image", "inspect", "--format", "{{json .Config}}", image)
	if err := json.Unmarshal([]byte(inspect), &config); err != nil {
		t.Fatalf("podman image inspect: %v in %q", err, inspect)
	}
	if config.User == "" || config.User == "0" || strings.HasPrefix(config.User, "0:") || strings.HasPrefix(config.User, "root") {
		t.Fatalf("image user = %q, want a user without privileges", config.User)
	}
	if !slices.Equal(config.Entrypoint, []string{"/sse-dashboard"}) {
		t.Fatalf("image entrypoint = %q, want [/sse-dashboard]", config.Entrypoint)
	}

	rootfs := strings.TrimSpace(runTool(t, ctx, "", podman, "image", "mount", image))
	t.Cleanup(func() { exec.Command(podman, "image", "unmount", image).Run() })
	var files []string
	filepath.WalkDir(rootfs, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(path, rootfs))
		}
		return err
	})
	slices.Sort(files)
	if want := []string{"/etc/group", "/etc/passwd", "/sse-dashboard"}; !slices.Equal(files, want) {
		t.Fatalf("the image holds %q, want %q: the static binary and its user alone", files, want)
	}
	uid, _, _ := strings.Cut(config.User, ":")
	passwd, _ := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if !regexp.MustCompile(`(?m)^[a-z-]+:x:` + regexp.QuoteMeta(uid) + `:`).Match(passwd) {
		t.Fatalf("/etc/passwd %q names no user %s", passwd, uid)
	}

	userspec := "--userspec=" + config.User
	version := runTool(t, ctx, "", chroot, userspec, rootfs, "/sse-dashboard", "-version")
	if !strings.Contains(version, "revision "+revision) {
		t.Fatalf("-version printed %q, want revision %s", version, revision)
	}

	logs := newLogBuffer()
	cmd := exec.Command(chroot, userspec, rootfs, "/sse-dashboard",
		"-addr", "127.0.0.1:0", "-admin-addr", "", "-interval", "100ms")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the image's binary: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("the image's binary logged:\n%s", logs.String())
		}
	})
	url, _ := waitListening(t, logs, 10*time.Second)
	for _, route := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(url + route)
		if err != nil {
			t.Fatalf("GET %s: %v", route, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d %q, want 200", route, resp.StatusCode, body)
		}
	}
	stream := openStream(t, url, http.Header{"Accept": {"text/event-stream"}})
	event := stream.nextEvent(t)
	var board struct{ User *uint }
	if err := json.Unmarshal([]byte(event.data), &board); err != nil || board.User == nil || event.id != "1" {
		t.Fatalf("first event id %q data %q, want id 1 and {\"User\":N}", event.id, event.data)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("the image's binary exited with %v on SIGTERM, want status 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the image's binary did not exit within 10s of SIGTERM")
	}
}

// TestSystemdUnit_Verifies checks deploy/sse-dashboard@.service with systemd-analyze
// verify, for an instance and with ExecStart pointing at a binary built here (verify
// checks that it exists): any warning fails the test, as an unknown or misspelt directive
// is only a warning to systemd. It also holds the unit's sandboxing to systemd's "OK"
// exposure level (2.0 or below) in systemd-analyze security.
func TestSystemdUnit_Verifies(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs systemd-analyze: run without -short")
	}
	analyze := requireTool(t, "", "systemd-analyze", "systemd")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "sse-dashboard")
	runTool(t, ctx, "", "go", "build", "-o", bin, ".")
	unit, err := os.ReadFile("deploy/sse-dashboard@.service")
	if err != nil {
		t.Fatal(err)
	}
	const execStart = "ExecStart=/usr/local/bin/sse-dashboard "
	if n := strings.Count(string(unit), execStart); n != 1 {
		t.Fatalf("%q occurs %d times in the unit, want once", execStart, n)
	}
	instance := filepath.Join(dir, "sse-dashboard@3000.service")
	rendered := strings.Replace(string(unit), execStart, "ExecStart="+bin+" ", 1)
	if err := os.WriteFile(instance, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := runTool(t, ctx, "", analyze, "verify", instance); out != "" {
		t.Fatalf("systemd-analyze verify:\n%s", out)
	}
	runTool(t, ctx, "", analyze, "security", "--offline=yes", "--threshold=20", instance)
}

// requireRoot skips the test, loudly, unless it runs as root, or fails it under CI=true,
// as requireTool does for a missing program.
func requireRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s need root: CI must run this test as root", what)
	}
	t.Skipf("SKIPPING %s: %s need root.", t.Name(), what)
}

// runTool runs name with args in dir (the current directory if empty) within ctx and returns
// its combined output, failing the test with that output if it fails.
func runTool(t *testing.T, ctx context.Context, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v after %s\n%s", name, strings.Join(args, " "), err, time.Since(start).Round(time.Millisecond), out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Logf("%s %s took %s", filepath.Base(name), args[0], took.Round(time.Second))
	}
	return string(out)
}

// containerBuilder returns a local builder image for the Containerfile's GO_IMAGE: this
// machine's Go toolchain and git on a Debian made with debootstrap, because the public
// golang image cannot be pulled everywhere CI runs. It is made once per Go version and
// kept; making it takes a minute or two.
func containerBuilder(t *testing.T, ctx context.Context, podman string) string {
	t.Helper()
	goroot := strings.TrimSpace(runTool(t, ctx, "", "go", "env", "GOROOT"))
	goversion := strings.TrimSpace(runTool(t, ctx, "", "go", "env", "GOVERSION"))
	image := "localhost/sse-dashboard-builder:" + goversion
	if exec.CommandContext(ctx, podman, "image", "exists", image).Run() == nil {
		return image
	}
	debootstrap := requireTool(t, "", "debootstrap", "debootstrap")
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	runTool(t, ctx, "", debootstrap, "--variant=minbase", "--include=git", builderSuite, rootfs, builderMirror)
	runTool(t, ctx, "", "cp", "-a", goroot, filepath.Join(rootfs, "usr/local/go"))
	tar := exec.CommandContext(ctx, "tar", "-C", rootfs, "-c", ".")
	imported := exec.CommandContext(ctx, podman, "import",
		"--change", "ENV PATH=/usr/local/go/bin:/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--change", "ENV GOPATH=/go",
		"--change", "ENV GOCACHE=/cache/go-build",
		"--change", "ENV GOTOOLCHAIN=local",
		"--change", "WORKDIR /go",
		"-", image)
	var err error
	if imported.Stdin, err = tar.StdoutPipe(); err != nil {
		t.Fatal(err)
	}
	if err := tar.Start(); err != nil {
		t.Fatalf("tar: %v", err)
	}
	out, importErr := imported.CombinedOutput()
	if err := tar.Wait(); err != nil || importErr != nil {
		t.Fatalf("tar -C %s -c . | podman import - %s: %v, %v\n%s", rootfs, image, err, importErr, out)
	}
	return image
}

// containerContext returns a build context for the Containerfile, a git checkout as a
// user's is (.git a directory, which a worktree's is not), of this checkout's HEAD with
// the working tree's changes on top, and HEAD's revision.
func containerContext(t *testing.T) (dir, revision string) {
	t.Helper()
	git := requireTool(t, "", "git", "git")
	ctx := context.Background()
	top := strings.TrimSpace(runTool(t, ctx, "", git, "rev-parse", "--show-toplevel"))
	revision = strings.TrimSpace(runTool(t, ctx, "", git, "rev-parse", "HEAD"))
	dir = filepath.Join(t.TempDir(), "src")
	runTool(t, ctx, "", git, "init", "-q", dir)
	runTool(t, ctx, dir, git, "fetch", "-q", "--depth", "1", "file://"+top, "HEAD")
	runTool(t, ctx, dir, git, "checkout", "-q", "FETCH_HEAD")
	changed := runTool(t, ctx, top, git, "ls-files", "-z", "--modified", "--others", "--exclude-standard")
	for _, name := range strings.Split(strings.TrimRight(changed, "\x00"), "\x00") {
		if name == "" {
			continue
		}
		info, err := os.Stat(filepath.Join(top, name))
		if os.IsNotExist(err) {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(top, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dir, revision
}
