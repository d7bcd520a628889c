"""The web gallery: a jobs page at ``/`` (live status, a submit form) and a page per job at
``/ui/jobs/{id}`` (target thumbnails, preview grids over training, final samples with "sample again",
plots, artifact downloads). The job page follows the job's Server-Sent Events (``/jobs/{id}/events``) instead
of polling; the jobs list still polls ``/jobs`` (there is no stream of all of a tenant's jobs).

Plain HTML + a little JavaScript over the JSON API: the pages carry no data themselves, so the tenant
rules of the API apply unchanged. With API keys required, the key is kept in the browser's localStorage
and sent as ``Authorization: Bearer``; signed artifact links need no key.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from core.options import METHODS

router = APIRouter(tags=["gallery"], include_in_schema=False)

_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>MineGAN - {title}</title>
<style>
 body {{ font: 14px system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }}
 h1 a {{ color: inherit; text-decoration: none; }} table {{ border-collapse: collapse; width: 100%; }}
 td, th {{ padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }} progress {{ width: 140px; }}
 .status-succeeded {{ color: #1a7f37; }} .status-failed {{ color: #cf222e; }} .status-canceled {{ color: #777; }}
 .box {{ border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 12px 0; }}
 .err {{ background: #ffebe9; border-color: #cf222e; }} .grid img {{ image-rendering: pixelated; margin: 4px; height: 150px; }}
 #samples {{ height: 300px !important; }} #plots img {{ height: auto; }}
 figure {{ display: inline-block; margin: 4px; text-align: center; }} figcaption {{ font-size: 12px; color: #666; }}
 label {{ display: inline-block; margin: 4px 12px 4px 0; }} #key {{ width: 340px; }}
</style></head><body>
<h1><a href="/">MineGAN</a> <small style="font-weight:normal;color:#666">few-shot GAN transfer by mining</small></h1>
<div class="box">API key (only if the server requires one):
 <input id="key" placeholder="mg_..."> <button onclick="saveKey()">save</button> <span id="keymsg"></span></div>
<script>
const KEY = () => localStorage.getItem('minegan_key') || '';
function saveKey() {{ localStorage.setItem('minegan_key', document.getElementById('key').value.trim());
  document.getElementById('keymsg').textContent = 'saved'; if (window.refresh) refresh(); }}
document.addEventListener('DOMContentLoaded', () => {{ document.getElementById('key').value = KEY(); }});
async function api(path, opts = {{}}) {{
  opts.headers = Object.assign({{}}, opts.headers || {{}}, KEY() ? {{'Authorization': 'Bearer ' + KEY()}} : {{}});
  const r = await fetch(path, opts);
  if (!r.ok) {{ let e; try {{ e = (await r.json()).error; }} catch (_) {{ e = {{code: 'http_' + r.status, message: r.statusText}}; }}
    throw Object.assign(new Error(e.message), {{status: r.status, code: e.code}}); }}
  return r;
}}
async function imgFromApi(el, path) {{  // images behind the API key: fetch, then show as a blob URL
  const r = await api(path); const url = URL.createObjectURL(await r.blob());
  if (el.dataset.blob) URL.revokeObjectURL(el.dataset.blob); el.dataset.blob = url; el.src = url;
}}
// A job's Server-Sent Events (GET /jobs/{{id}}/events) read with fetch, so the API key can go in a header (EventSource
// cannot send one); after a dropped connection it reconnects with Last-Event-ID and misses nothing.
async function watchEvents(path, onEvent) {{
  let last = 0;
  for (;;) {{
    try {{
      const r = await api(path, {{headers: last ? {{'Last-Event-ID': String(last)}} : {{}}}});
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = '';
      for (;;) {{
        const {{value, done}} = await reader.read();
        if (done) return;  // the server ends the stream after the job's last event
        buf += dec.decode(value, {{stream: true}});
        let i;
        while ((i = buf.indexOf('\\n\\n')) >= 0) {{
          const ev = {{}};
          for (const line of buf.slice(0, i).split('\\n')) {{
            const k = line.indexOf(': ');
            if (!line.startsWith(':') && k > 0) ev[line.slice(0, k)] = line.slice(k + 2);
          }}
          buf = buf.slice(i + 2);
          if (ev.id) {{ last = +ev.id; await onEvent(ev.event, JSON.parse(ev.data)); if (ev.event === 'completed') return; }}
        }}
      }}
    }} catch (e) {{
      if (e.status && e.status < 500) throw e;
      await new Promise(res => setTimeout(res, 2000));
    }}
  }}
}}
const esc = s => String(s).replace(/[&<>"']/g, c => ({{'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}}[c]));
</script>
"""

_INDEX = """
<div class="box"><b>New job</b><br>
<form id="submit" onsubmit="submitJob(event)">
 <label>target zip <input type="file" id="images" accept=".zip" required></label>
 <label>sources <select id="sources" multiple size="3" required></select></label>
 <label>method <select id="method"></select></label>
 <label>mining steps <input type="number" id="mining" value="200" min="0" style="width:6em"></label>
 <label>finetune steps <input type="number" id="finetune" value="100" min="0" style="width:6em"></label>
 <label>batch <input type="number" id="batch" value="64" min="1" style="width:5em"></label>
 <button type="submit" id="go">submit</button> <span id="submitmsg"></span>
</form></div>
<div id="listerr"></div>
<table><thead><tr><th>job</th><th>status</th><th>progress</th><th>method</th><th>sources</th><th>created</th></tr></thead>
<tbody id="jobs"></tbody></table>
<script>
const METHODS = {methods};
async function loadModels() {{
  const ms = await (await api('/models')).json();
  document.getElementById('sources').innerHTML = ms.map(m =>
    `<option value="${{esc(m.id)}}">${{esc(m.id)}} (${{m.resolution}}px${{m.conditional ? ', conditional' : ''}})</option>`).join('');
  document.getElementById('method').innerHTML = METHODS.map(m => `<option ${{m === 'minegan++' ? 'selected' : ''}}>${{m}}</option>`).join('');
}}
async function refresh() {{
  try {{
    const page = await (await api('/jobs?limit=50')).json();
    document.getElementById('listerr').innerHTML = '';
    document.getElementById('jobs').innerHTML = page.items.map(j => `<tr>
      <td><a href="/ui/jobs/${{j.id}}">${{j.id.slice(0, 8)}}</a></td>
      <td class="status-${{j.status}}">${{j.status}}${{j.phase ? ' / ' + esc(j.phase) : ''}}</td>
      <td><progress max="1" value="${{j.progress}}"></progress> ${{j.step}}/${{j.total_steps}}</td>
      <td>${{esc(j.method)}}</td><td>${{esc(j.spec.sources.join(', '))}}</td>
      <td>${{j.created_at.slice(0, 19).replace('T', ' ')}}</td></tr>`).join('');
  }} catch (e) {{ document.getElementById('listerr').innerHTML = `<div class="box err">${{esc(e.message)}}</div>`; }}
}}
async function submitJob(ev) {{
  ev.preventDefault();
  const fd = new FormData();
  fd.append('images', document.getElementById('images').files[0]);
  const sources = [...document.getElementById('sources').selectedOptions].map(o => o.value);
  fd.append('spec', JSON.stringify({{sources, method: document.getElementById('method').value,
    mining_steps: +document.getElementById('mining').value, finetune_steps: +document.getElementById('finetune').value,
    batch_size: +document.getElementById('batch').value}}));
  const msg = document.getElementById('submitmsg');
  try {{ const job = await (await api('/jobs', {{method: 'POST', body: fd}})).json(); location.href = '/ui/jobs/' + job.id; }}
  catch (e) {{ msg.innerHTML = `<span class="status-failed">${{e.status}} ${{esc(e.code)}}: ${{esc(e.message)}}</span>`; }}
}}
loadModels().catch(e => document.getElementById('listerr').innerHTML = `<div class="box err">${{esc(e.message)}}</div>`);
refresh(); setInterval(refresh, 2000);
</script></body></html>"""

_JOB = """
<h2>job <span id="jid">{job_id}</span></h2>
<div class="box"><span id="status">loading...</span> <progress id="bar" max="1" value="0"></progress> <span id="steps"></span>
 <div id="stats" style="color:#555;font-size:12px"></div><div id="error"></div></div>
<h3>Target images</h3><div class="grid"><img id="target" alt="target images"></div>
<h3>Previews during training <small>(fixed seed)</small></h3><div class="grid" id="previews"></div>
<h3>Samples</h3><div id="samplebox">available when the job has succeeded</div><div id="kept"></div>
<h3>Plots</h3><div class="grid" id="plots"></div>
<h3>Artifacts</h3><ul id="artifacts"></ul>
<script>
const ID = {job_id_js};
let finalShown = false, seed = 0;
async function sampleAgain() {{
  seed = Math.floor(Math.random() * 1e9);
  await imgFromApi(document.getElementById('samples'), `/jobs/${{ID}}/sample?n=16&seed=${{seed}}`);
  document.getElementById('seed').textContent = seed;
}}
async function refresh() {{
  let j;
  try {{ j = await (await api('/jobs/' + ID)).json(); }}
  catch (e) {{ document.getElementById('status').innerHTML = `<span class="status-failed">${{esc(e.message)}}</span>`; return; }}
  document.getElementById('status').innerHTML = `<b class="status-${{j.status}}" id="state">${{j.status}}</b>` +
    (j.phase ? ` - ${{esc(j.phase)}}` : '') + ` - ${{esc(j.method)}} from ${{esc(j.spec.sources.join(', '))}}`;
  document.getElementById('bar').value = j.progress;
  document.getElementById('steps').textContent = `step ${{j.step}} / ${{j.total_steps}}`;
  document.getElementById('stats').textContent = Object.entries(j.stats || {{}}).map(([k, v]) => `${{k}} ${{(+v).toPrecision(3)}}`).join('  ');
  if (j.error) document.getElementById('error').innerHTML = `<div class="box err">${{esc(j.error.code)}}: ${{esc(j.error.message)}}</div>`;
  const t = document.getElementById('target');
  if (!t.src && j.target) imgFromApi(t, `/jobs/${{ID}}/target.png`).catch(() => {{}});
  const prev = await (await api(`/jobs/${{ID}}/previews`)).json();
  const box = document.getElementById('previews');
  if (box.children.length !== prev.length)
    box.innerHTML = prev.map(p => `<figure><img src="${{p.url}}" alt="step ${{p.step}}"><figcaption>step ${{p.step}}</figcaption></figure>`).join('');
  const final = ['succeeded', 'failed', 'canceled'].includes(j.status);
  if (final && !finalShown) {{
    finalShown = true;
    const arts = await (await api(`/jobs/${{ID}}/artifacts`)).json();
    document.getElementById('artifacts').innerHTML = arts.filter(a => !a.key.includes('/previews/')).map(a =>
      `<li><a href="${{a.url}}" download>${{esc(a.key.split('/').slice(2).join('/'))}}</a></li>`).join('');
    document.getElementById('plots').innerHTML = arts.filter(a => a.key.includes('/plots/')).map(a =>
      `<figure><img src="${{a.url}}" alt="${{esc(a.name)}}" style="max-width:520px"><figcaption>${{esc(a.name)}}</figcaption></figure>`).join('');
    if (j.status === 'succeeded') {{
      document.getElementById('samplebox').innerHTML = `<div class="grid"><img id="samples" alt="samples"></div>
        <button id="again" onclick="sampleAgain()">sample again</button> seed <span id="seed">0</span>`;
      await imgFromApi(document.getElementById('samples'), `/jobs/${{ID}}/sample?n=16&seed=0`);
      const kept = (j.metrics || {{}}).keep_best;  // which candidate was published (core/keep_best.py) and the score curve
      if (kept) document.getElementById('kept').innerHTML = `<div class="box">published: step <b id="published">${{kept.published_step}}</b>
        of ${{kept.last_step}} (keep_best, ${{esc(kept.criterion)}}, lower is better): ` +
        Object.entries(kept.scores).map(([s, v]) => `step ${{esc(s)}}: ${{(+v).toPrecision(4)}}`).join(', ') + '</div>';
    }}
  }}
}}
// live updates from the job's event stream instead of polling: progress in place, anything else re-reads the job
async function onEvent(kind, data) {{
  if (kind === 'progress') {{
    document.getElementById('bar').value = data.total_steps ? data.step / data.total_steps : 0;
    document.getElementById('steps').textContent = `step ${{data.step}} / ${{data.total_steps}}`;
    document.getElementById('stats').textContent = Object.entries(data.stats || {{}}).map(([k, v]) => `${{k}} ${{(+v).toPrecision(3)}}`).join('  ');
  }} else {{
    await refresh();
  }}
}}
refresh().then(() => watchEvents(`/jobs/${{ID}}/events`, onEvent)).then(refresh)
  .catch(e => document.getElementById('status').innerHTML = `<span class="status-failed">${{esc(e.message)}}</span>`);
</script></body></html>"""


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(_HEAD.format(title="jobs") + _INDEX.format(methods=json.dumps(list(METHODS))))


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$")]) -> HTMLResponse:
    return HTMLResponse(_HEAD.format(title="job") + _JOB.format(job_id=job_id, job_id_js=json.dumps(job_id)))
