package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a process the bed started in a namespace. Close stops every Proc
// that is still running.
type Proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer // nil when the output goes to a file
	done chan struct{}
	err  error // Wait's result; set before done is closed
}

// startProc starts args in namespace ns (the host's if empty), in a process group of its own (so
// a terminal's ^C reaches the test program only, which then stops the
// process). Output goes to w, or to a buffer that Output returns if w is nil.
func (b *Bed) startProc(ns string, w io.Writer, args ...string) (*Proc, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	if ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Proc{name: strings.Join(args, " "), cmd: cmd, done: make(chan struct{})}
	if ns != "" {
		p.name = ns + ": " + p.name
	}
	if w == nil {
		p.out = new(syncBuffer)
		w = p.out
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	b.procs = append(b.procs, p)
	return p, nil
}

// Pid is the process ID (`ip netns exec` execs the command, so this is the
// command itself).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and if so its Wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits for the process to exit or ctx to end.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", p.name, ctx.Err())
	}
}

// Signal sends sig to the process's group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if exited, _ := p.Exited(); exited {
		return fmt.Errorf("%s: already exited", p.name)
	}
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop sends sig, waits up to grace for the process to exit, then kills its
// group. It returns the process's Wait error, nil for a clean exit or for
// the SIGKILL it was asked to send; an error also when grace ran out.
func (p *Proc) Stop(sig syscall.Signal, grace time.Duration) error {
	if exited, err := p.Exited(); exited {
		return err
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		var exitErr *exec.ExitError
		if sig == syscall.SIGKILL && errors.As(p.err, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
				return nil
			}
		}
		return p.err
	case <-timer.C:
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s: still running %v after %v, killed", p.name, sig, grace)
	}
}

// Output is what the process has printed so far, when it was started
// without a log file.
func (p *Proc) Output() string {
	if p.out == nil {
		return ""
	}
	return p.out.String()
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
