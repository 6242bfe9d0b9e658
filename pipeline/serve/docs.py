"""`GET /docs`: the API's reference, drawn in the browser from /openapi.json by a few
lines of script in the page itself. FastAPI's own Swagger UI and ReDoc load from a
CDN, which a server without Internet access (or a careful one) cannot use."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>upscaler API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
code, pre { font-family: ui-monospace, monospace; } pre { background: #f4f4f4; padding: .5rem; overflow: auto; }
.op { border: 1px solid #ddd; border-radius: 6px; margin: 1rem 0; padding: .5rem 1rem; }
.method { font-weight: bold; text-transform: uppercase; margin-right: .5rem; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; }
</style></head>
<body>
<h1>upscaler API</h1>
<p>Every <code>/v1</code> route takes <code>Authorization: Bearer &lt;key&gt;</code>; errors are
<code>{"error": "..."}</code>. The machine-readable schema is <a href="/openapi.json">/openapi.json</a>.</p>
<div id="ops">Loading the schema…</div>
<script>
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
fetch("/openapi.json").then((r) => r.json()).then((schema) => {
  const parts = [];
  for (const [path, item] of Object.entries(schema.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const params = (op.parameters || []).map((p) =>
        `<tr><td><code>${esc(p.name)}</code></td><td>${esc(p.in)}</td><td>${esc(p.description || "")}</td></tr>`).join("");
      const codes = Object.entries(op.responses || {}).map(([c, r]) => `${esc(c)} ${esc(r.description)}`).join("; ");
      parts.push(`<section class="op"><h2><span class="method">${esc(method)}</span><code>${esc(path)}</code></h2>
        <p>${esc(op.summary || "")}</p>${op.description ? `<pre>${esc(op.description)}</pre>` : ""}
        ${params ? `<table><tr><th>parameter</th><th>in</th><th>meaning</th></tr>${params}</table>` : ""}
        <p>Responses: ${codes}</p></section>`);
    }
  }
  document.getElementById("ops").innerHTML = parts.join("");
  document.body.dataset.ready = "true";
}).catch((e) => { document.getElementById("ops").textContent = "Could not load /openapi.json: " + e; });
</script>
</body></html>
"""
