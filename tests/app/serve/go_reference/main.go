package main

// The Go reference for tests/app/serve/test_milvus_client_go.py, written for it (not Milvus
// code): it posts and decodes as Milvus's vllm/tei clients do, with Go's own net/http and
// encoding/json, so the Python client's bytes and decoding rules are checked against Go's.
import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
)

type vllmResp struct {
	ID    string `json:"id"`
	Model string `json:"model"`
	Usage struct {
		TotalTokens int `json:"total_tokens"`
	} `json:"usage"`
	Results []struct {
		Index          int     `json:"index"`
		RelevanceScore float32 `json:"relevance_score"`
	} `json:"results"`
}

type teiItem struct {
	Index int     `json:"index"`
	Score float32 `json:"score"`
}

type sendCase struct {
	URL  string         `json:"url"`
	Key  string         `json:"key"`
	Body map[string]any `json:"body"`
}

func main() {
	switch os.Args[1] {
	case "send":
		var cases []sendCase
		raw, _ := os.ReadFile(os.Args[2])
		if err := json.Unmarshal(raw, &cases); err != nil {
			panic(err)
		}
		for _, c := range cases {
			// ints arrive as float64 from the case file: restore the int64 Milvus puts in
			if v, ok := c.Body["truncate_prompt_tokens"].(float64); ok {
				c.Body["truncate_prompt_tokens"] = int64(v)
			}
			data, _ := json.Marshal(c.Body)
			req, _ := http.NewRequest(http.MethodPost, c.URL, bytes.NewBuffer(data))
			req.Header.Set("Content-Type", "application/json")
			if c.Key != "" {
				req.Header.Set("Authorization", fmt.Sprintf("Bearer %s", c.Key))
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				panic(err)
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
		}
	case "decode":
		var answers []struct {
			Provider string `json:"provider"`
			Raw      string `json:"raw"`
		}
		raw, _ := os.ReadFile(os.Args[2])
		json.Unmarshal(raw, &answers)
		out := []map[string]any{}
		for _, a := range answers {
			var pairs [][2]float64
			var err error
			if a.Provider == "vllm" {
				var r vllmResp
				err = json.Unmarshal([]byte(a.Raw), &r)
				sort.Slice(r.Results, func(i, j int) bool { return r.Results[i].Index < r.Results[j].Index })
				for _, x := range r.Results {
					pairs = append(pairs, [2]float64{float64(x.Index), float64(x.RelevanceScore)})
				}
			} else {
				var r []teiItem
				err = json.Unmarshal([]byte(a.Raw), &r)
				sort.Slice(r, func(i, j int) bool { return r[i].Index < r[j].Index })
				for _, x := range r {
					pairs = append(pairs, [2]float64{float64(x.Index), float64(x.Score)})
				}
			}
			out = append(out, map[string]any{"ok": err == nil, "pairs": pairs})
		}
		enc, _ := json.Marshal(out)
		os.Stdout.Write(enc)
	}
}
