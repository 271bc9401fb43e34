package main

import (
	"cmp"
	"debug/dwarf"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
)

// goroutineKind is what one kind of goroutine in a server process costs in stacks: how
// many there are, and the stack memory they hold and use.
type goroutineKind struct {
	label     string
	count     int
	allocated uint64 // bytes of stack the goroutines hold
	used      uint64 // bytes between each one's saved stack pointer and its stack top
	largestKB uint64 // the largest stack of one of them, in KB
}

// stackKinds names the goroutines a stream runs, by the function each one started in.
// A goroutine whose start function matches none keeps that function as its label.
var stackKinds = []struct{ prefix, label string }{
	{"github.com/valyala/fasthttp.(*workerPool).getCh.", "fasthttp worker"},
	{"github.com/valyala/fasthttp/fasthttpadaptor.NewFastHTTPHandler.", "adaptor handler"},
	{"github.com/valyala/fasthttp.NewStreamReader.", "stream writer"},
	{"net/http.(*Server).Serve.", "net/http conn (handler)"},
	{"net/http.(*connReader).startBackgroundRead.", "net/http background read"},
}

// goroutineStacks reads every goroutine's stack bounds out of the memory of process pid,
// which must run this same executable, and sums them per kind. The runtime offers no
// other way to see one goroutine's stack size: a goroutine profile has its frames, not
// the stack it holds. It reads runtime.allgs and the runtime.g fields the executable's
// DWARF describes; dead goroutines count as one kind, because they keep their stacks.
func goroutineStacks(pid int) ([]goroutineKind, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	layout, err := readGLayout(exe)
	if err != nil {
		return nil, fmt.Errorf("read the goroutine layout from %s: %w", exe, err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	word := func(b []byte, off uint64) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
	header := make([]byte, 16)
	if _, err := mem.ReadAt(header, int64(layout.allgs)); err != nil {
		return nil, fmt.Errorf("read runtime.allgs: %w", err)
	}
	gptrs := make([]byte, 8*word(header, 8))
	if _, err := mem.ReadAt(gptrs, int64(word(header, 0))); err != nil {
		return nil, fmt.Errorf("read the goroutine list: %w", err)
	}
	kinds := map[string]*goroutineKind{}
	g := make([]byte, layout.size)
	for i := 0; i < len(gptrs); i += 8 {
		if _, err := mem.ReadAt(g, int64(word(gptrs, uint64(i)))); err != nil {
			return nil, fmt.Errorf("read a goroutine: %w", err)
		}
		lo, hi := word(g, layout.stackLo), word(g, layout.stackHi)
		if hi <= lo {
			continue // a dead goroutine whose stack was freed
		}
		label := "dead (keeps its stack for reuse)"
		status := binary.LittleEndian.Uint32(g[layout.status:]) &^ 0x1000 // without _Gscan
		if status != 6 {                                                  // _Gdead
			label = "?"
			if fn := runtime.FuncForPC(uintptr(word(g, layout.startpc))); fn != nil {
				label = kindOf(fn.Name())
			}
		}
		k := kinds[label]
		if k == nil {
			k = &goroutineKind{label: label}
			kinds[label] = k
		}
		k.count++
		k.allocated += hi - lo
		k.largestKB = max(k.largestKB, (hi-lo)/1024)
		if sp := word(g, layout.sp); sp >= lo && sp < hi && status != 6 {
			k.used += hi - sp
		}
	}
	list := make([]goroutineKind, 0, len(kinds))
	for _, k := range kinds {
		list = append(list, *k)
	}
	slices.SortFunc(list, func(a, b goroutineKind) int { return cmp.Compare(b.allocated, a.allocated) })
	return list, nil
}

// kindOf labels a goroutine by the function it started in.
func kindOf(startFunc string) string {
	for _, k := range stackKinds {
		if strings.HasPrefix(startFunc, k.prefix) {
			return k.label
		}
	}
	// A go statement that passes arguments starts in a wrapper named after the function
	// that has the statement.
	switch {
	case strings.HasPrefix(startFunc, "sse-dashboard.(*sseHandler).serve.gowrap"):
		return "stream (connection taken over)"
	case strings.HasPrefix(startFunc, "sse-dashboard.") && strings.Contains(startFunc, ".gowrap"):
		return "producer"
	case strings.HasPrefix(startFunc, "github.com/valyala/fasthttp.(*Server).serveConn") && strings.Contains(startFunc, ".gowrap"):
		return "fasthttp, waiting for the taken connection's close"
	}
	return startFunc
}

// gLayout is where the fields goroutineStacks reads sit in the executable's memory.
type gLayout struct {
	allgs                                 uint64 // address of runtime.allgs, a []*g
	size                                  uint64 // size of runtime.g
	stackLo, stackHi, sp, status, startpc uint64 // field offsets in runtime.g
}

// readGLayout finds runtime.allgs in the symbol table and the runtime.g fields in DWARF.
func readGLayout(path string) (gLayout, error) {
	var l gLayout
	f, err := elf.Open(path)
	if err != nil {
		return l, err
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC {
		return l, errors.New("not a position-dependent executable: its addresses differ per process")
	}
	symbols, err := f.Symbols()
	if err != nil {
		return l, err
	}
	for _, s := range symbols {
		if s.Name == "runtime.allgs" {
			l.allgs = s.Value
		}
	}
	if l.allgs == 0 {
		return l, errors.New("no runtime.allgs symbol")
	}
	d, err := f.DWARF()
	if err != nil {
		return l, err
	}
	structs := map[string]*dwarf.StructType{}
	for _, name := range []string{"runtime.g", "runtime.stack", "runtime.gobuf"} {
		structs[name] = nil
	}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if v, want := structs[name]; !want || v != nil || e.Tag != dwarf.TagStructType {
			if e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
			continue
		}
		t, err := d.Type(e.Offset)
		if err != nil {
			return l, err
		}
		structs[name], _ = t.(*dwarf.StructType)
		r.SkipChildren()
	}
	field := func(s, name string) (uint64, error) {
		st := structs[s]
		if st == nil {
			return 0, fmt.Errorf("no type %s", s)
		}
		for _, f := range st.Field {
			if f.Name == name {
				return uint64(f.ByteOffset), nil
			}
		}
		return 0, fmt.Errorf("no field %s.%s", s, name)
	}
	var errs []error
	off := func(s, name string) uint64 {
		o, err := field(s, name)
		errs = append(errs, err)
		return o
	}
	stack, sched := off("runtime.g", "stack"), off("runtime.g", "sched")
	l.stackLo, l.stackHi = stack+off("runtime.stack", "lo"), stack+off("runtime.stack", "hi")
	l.sp = sched + off("runtime.gobuf", "sp")
	l.status = off("runtime.g", "atomicstatus") // an atomic.Uint32 whose value comes first
	l.startpc = off("runtime.g", "startpc")
	if g := structs["runtime.g"]; g != nil {
		l.size = uint64(g.ByteSize)
	}
	return l, errors.Join(errs...)
}
