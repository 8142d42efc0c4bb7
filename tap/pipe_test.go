package tap

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func TestPipeCarriesFramesBothWays(t *testing.T) {
	vm, node := NewPipe()
	defer vm.Close()
	defer node.Close()

	frame := []byte("frame from the vm")
	if err := vm.WriteFrame(frame); err != nil {
		t.Fatal(err)
	}
	frame[0] = 'X' // the pipe must have copied it
	buf := make([]byte, 64)
	n, err := node.ReadFrame(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "frame from the vm" {
		t.Errorf("node read %q", got)
	}

	if err := node.WriteFrame([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	n, err = vm.ReadFrame(buf)
	if err != nil || string(buf[:n]) != "reply" {
		t.Errorf("vm read %q, %v", buf[:n], err)
	}
}

func TestPipeKeepsFrameBoundaries(t *testing.T) {
	vm, node := NewPipe()
	defer vm.Close()
	defer node.Close()
	frames := [][]byte{[]byte("a"), []byte("bb"), {}, []byte("dddd")}
	for _, f := range frames {
		if err := vm.WriteFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 64)
	for _, want := range frames {
		n, err := node.ReadFrame(buf)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
		}
	}
}

func TestPipeShortBuffer(t *testing.T) {
	vm, node := NewPipe()
	defer vm.Close()
	defer node.Close()
	if err := vm.WriteFrame([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	n, err := node.ReadFrame(buf)
	if n != 4 || !errors.Is(err, io.ErrShortBuffer) {
		t.Errorf("got %d, %v; want 4, io.ErrShortBuffer", n, err)
	}
}

func TestPipeCloseUnblocksReader(t *testing.T) {
	vm, node := NewPipe()
	defer vm.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := node.ReadFrame(make([]byte, 64))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the reader block
	node.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("ReadFrame after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadFrame")
	}
	if err := node.WriteFrame([]byte("x")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteFrame after Close: %v, want os.ErrClosed", err)
	}
	if err := node.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestPipePeerCloseDrainsThenEOF(t *testing.T) {
	vm, node := NewPipe()
	defer node.Close()
	if err := vm.WriteFrame([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	vm.Close()

	buf := make([]byte, 64)
	n, err := node.ReadFrame(buf)
	if err != nil || string(buf[:n]) != "last words" {
		t.Fatalf("read %q, %v; want the queued frame", buf[:n], err)
	}
	if _, err := node.ReadFrame(buf); !errors.Is(err, io.EOF) {
		t.Errorf("read after peer close: %v, want io.EOF", err)
	}
	if err := node.WriteFrame([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("write after peer close: %v, want io.ErrClosedPipe", err)
	}
}

func TestPipeNames(t *testing.T) {
	vm, node := NewPipe()
	if vm.Name() == node.Name() {
		t.Errorf("both ends are named %q", vm.Name())
	}
}

func TestPipeReadFramesTakesWhatIsQueued(t *testing.T) {
	vm, node := NewPipe()
	defer vm.Close()
	defer node.Close()
	for i := range 5 {
		if err := vm.WriteFrame([]byte{byte(i), byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	bufs := [][]byte{make([]byte, 64), make([]byte, 64), make([]byte, 64)}
	sizes := make([]int, 3)
	for _, want := range [][]int{{0, 1, 2}, {3, 4}} {
		n, err := node.ReadFrames(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(want) {
			t.Fatalf("read %d frames, want %d", n, len(want))
		}
		for i, w := range want {
			if sizes[i] != 2 || bufs[i][0] != byte(w) {
				t.Fatalf("frame %d = %x, want %d", i, bufs[i][:sizes[i]], w)
			}
		}
	}
}
