// Renders an Ollama `template` file for chat conversations exactly as Ollama's template.Execute does on the
// /api/chat path (ollama/ollama template/template.go, read at commit fb30760): Go's own text/template, parsed with
// Option("missingkey=zero") and Ollama's `json` function, executed on the map Ollama builds, after collate() has
// joined the system messages into .System and merged consecutive messages of one role. Ollama's other functions
// (currentDate, toTypeScriptType ...) and tool/thinking fields are left out: the router's template uses none, and
// a template that used them would fail to parse here rather than render differently.
//
// Usage: go run tests/ollama_template/main.go TEMPLATE_FILE < conversations.json   (a JSON list of message lists;
// prints the JSON list of rendered prompts)
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// templateMessage is Ollama's template-facing message (template/template.go).
type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []any
	ToolName   string
	ToolCallID string
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// collate is Ollama's: system messages are also collected into one string; consecutive same-role messages merge.
func collate(msgs []message) (string, []*templateMessage) {
	var system []string
	var collated []*templateMessage
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == m.Role && m.Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, &templateMessage{Role: m.Role, Content: m.Content})
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if !strings.Contains(string(raw), ".Messages") {
		fmt.Fprintln(os.Stderr, "template does not use .Messages: Ollama would run its legacy Prompt/Response path")
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(string(raw))
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	var conversations [][]message
	if err := json.NewDecoder(os.Stdin).Decode(&conversations); err != nil {
		fmt.Fprintln(os.Stderr, "input:", err)
		os.Exit(2)
	}
	prompts := []string{}
	for _, conversation := range conversations {
		system, messages := collate(conversation)
		var b bytes.Buffer
		err := tmpl.Execute(&b, map[string]any{
			"System": system, "Messages": messages, "Tools": nil, "Response": "",
			"Think": false, "ThinkLevel": "", "IsThinkSet": false,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "execute:", err)
			os.Exit(1)
		}
		prompts = append(prompts, b.String())
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetEscapeHTML(false)
	encoder.Encode(prompts)
}
