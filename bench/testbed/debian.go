package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ImageSuite is the Debian release appliance images are built from: the
// first with HTCondor packaged.
const ImageSuite = "trixie"

// imagePackages go into every image: systemd to boot it, nss-myhostname so
// that the VM's own name resolves without DNS (Condor looks it up at
// start, and a lookup that waits on an unreachable resolver costs it a
// minute), and the tools the tests run inside.
var imagePackages = []string{"systemd", "systemd-sysv", "libnss-myhostname", "iproute2", "iputils-ping"}

// ImageUser is the ordinary user that images carry for submitting jobs.
const ImageUser = "alice"

// builtStamp marks a finished image build, so that a directory left by an
// interrupted one is built again rather than used.
const builtStamp = ".ringnet-image-built"

// ImageFiles are the files from the repository that an appliance image
// carries, as docs/appliance.md installs them.
type ImageFiles struct {
	Unit    string // ringnet.service
	Network string // systemd-networkd's .network file for the TAP
}

// BuildImage makes, in dir, the root file system of an appliance image:
// Debian ImageSuite from mirror by debootstrap, with systemd,
// HTCondor, ringnet's unit and systemd-networkd enabled, and the user
// ImageUser. VMs boot it with Boot, each on a volatile overlay of its own,
// so one image serves every VM of a run. The ringnet binary and the seed
// config are bound in at boot. A directory that holds a finished build is
// used as it is. Progress goes to logf.
func BuildImage(ctx context.Context, dir, mirror string, files ImageFiles, logf func(string, ...any)) error {
	if _, err := os.Stat(filepath.Join(dir, builtStamp)); err == nil {
		logf("image: using the build in %s", dir)
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	logf("image: debootstrap %s into %s", ImageSuite, dir)
	if _, err := run(ctx, "", "debootstrap", "--variant=minbase", "--include="+strings.Join(imagePackages, ","),
		ImageSuite, dir, mirror); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	// apt-get wants /proc; mount it in a mount namespace of the command's
	// own, so that nothing stays mounted inside dir whatever happens.
	logf("image: installing HTCondor")
	install := fmt.Sprintf("mount -t proc proc %q/proc && DEBIAN_FRONTEND=noninteractive chroot %q "+
		"apt-get install -y -q --no-install-recommends condor", dir, dir)
	if _, err := run(ctx, "", "unshare", "--mount", "sh", "-c", install); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if _, err := run(ctx, "", "chroot", dir, "useradd", "--create-home", "--shell", "/bin/sh", ImageUser); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := installImageFiles(ctx, dir, files); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	// No resolver: a lookup fails at once instead of waiting on one that
	// the VM cannot reach.
	if err := os.WriteFile(filepath.Join(dir, "etc/resolv.conf"), nil, 0o644); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	// No host name of its own (debootstrap copied the host's): each VM
	// keeps the one it boots with.
	if err := os.Remove(filepath.Join(dir, "etc/hostname")); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, builtStamp), nil, 0o644); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return nil
}

// installImageFiles installs ringnet's unit and the TAP's .network file and
// enables them, with systemd-networkd, as docs/appliance.md does.
func installImageFiles(ctx context.Context, dir string, files ImageFiles) error {
	copies := map[string]string{
		files.Unit:    "etc/systemd/system/ringnet.service",
		files.Network: "etc/systemd/network/" + filepath.Base(files.Network),
	}
	for src, dst := range copies {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		dst = filepath.Join(dir, dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			return err
		}
	}
	// Enabling works offline in a chroot: it only makes the links.
	_, err := run(ctx, "", "chroot", dir, "systemctl", "enable", "ringnet.service", "systemd-networkd.service")
	return err
}

// RepoImageFiles are the image files in the repository whose root is repo.
func RepoImageFiles(repo string) ImageFiles {
	return ImageFiles{
		Unit:    filepath.Join(repo, "docs/appliance/ringnet.service"),
		Network: filepath.Join(repo, "docs/appliance/ringnet0.network"),
	}
}

// PrepareImage builds the image with repo's files into dir (or uses the
// finished build there), or, with dir empty, into a temporary directory
// that remove deletes; remove is never nil.
func PrepareImage(ctx context.Context, dir, mirror, repo string, logf func(string, ...any)) (root string, remove func(), err error) {
	remove = func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "ringnet-image-")
		if err != nil {
			return "", remove, err
		}
		remove = func() { os.RemoveAll(tmp) }
		dir = filepath.Join(tmp, "root")
	}
	if err := BuildImage(ctx, dir, mirror, RepoImageFiles(repo), logf); err != nil {
		return "", remove, err
	}
	return dir, remove, nil
}
