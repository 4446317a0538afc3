// Command argocd-health runs Argo CD resource health checks the way Argo CD does, against
// the tests beside them, so Weir's checks can be tested here and contributed upstream as
// they are.
//
// Usage: argocd-health DIR
//
//	argocd-health eval SCRIPT OBJECT   (prints the status the script gives OBJECT, as JSON)
//
// Every folder under DIR holding a health.lua and a health_test.yaml (Argo CD's
// resource_customizations/<group>/<kind>/ layout) is checked: for each test, the object at
// inputPath is given to the script as the global `obj` and the table the script returns
// must equal healthStatus (status and message). The Lua state is set up as Argo CD's
// (util/lua) is for health checks: gopher-lua with only the package, base and table
// libraries, and a one-second limit.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type testCase struct {
	HealthStatus healthStatus `json:"healthStatus"`
	InputPath    string       `json:"inputPath"`
}

type testFile struct {
	Tests []testCase `json:"tests"`
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "eval" {
		script, err := os.ReadFile(os.Args[2])
		if err == nil {
			var got healthStatus
			if got, err = run(string(script), os.Args[3]); err == nil {
				out, _ := json.Marshal(got)
				fmt.Println(string(out))
				return
			}
		}
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health DIR | argocd-health eval SCRIPT OBJECT")
		os.Exit(2)
	}
	checked, failed := 0, 0
	err := filepath.WalkDir(os.Args[1], func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "health_test.yaml" {
			return err
		}
		dir := filepath.Dir(path)
		script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
		if err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var tests testFile
		if err := yaml.UnmarshalStrict(raw, &tests); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(tests.Tests) == 0 {
			return fmt.Errorf("%s: no tests", path)
		}
		for _, tc := range tests.Tests {
			checked++
			got, err := run(string(script), filepath.Join(dir, tc.InputPath))
			switch {
			case err != nil:
				failed++
				fmt.Printf("FAIL %s %s: %v\n", dir, tc.InputPath, err)
			case got != tc.HealthStatus:
				failed++
				fmt.Printf("FAIL %s %s:\n  want %+v\n  got  %+v\n", dir, tc.InputPath, tc.HealthStatus, got)
			default:
				fmt.Printf("ok   %s %s: %s\n", dir, tc.InputPath, got.Status)
			}
		}
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
	fmt.Printf("%d checked, %d failed\n", checked, failed)
	if failed > 0 || checked == 0 {
		os.Exit(1)
	}
}

// run executes a health script against the object in file input.
func run(script, input string) (healthStatus, error) {
	raw, err := os.ReadFile(input)
	if err != nil {
		return healthStatus{}, err
	}
	var obj map[string]interface{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return healthStatus{}, fmt.Errorf("%s: %w", input, err)
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return healthStatus{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decode(l, obj))
	if err := l.DoString(script); err != nil {
		return healthStatus{}, err
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return healthStatus{}, fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	return healthStatus{
		Status:  lua.LVAsString(table.RawGetString("status")),
		Message: lua.LVAsString(table.RawGetString("message")),
	}, nil
}

// decode turns a decoded JSON value into Lua values, as Argo CD's decodeValue does.
func decode(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case map[string]interface{}:
		t := l.NewTable()
		for k, item := range v {
			t.RawSetString(k, decode(l, item))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, item := range v {
			t.Append(decode(l, item))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(v))
	}
}
