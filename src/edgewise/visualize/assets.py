"""The report page's stylesheet and scripts, inlined into every page (no external
resources)."""

CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--accent:#1d4ed8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
 sans-serif;color:var(--fg);background:var(--bg)}
header{background:#0f172a;color:#f8fafc;padding:18px 32px 16px}
header h1{margin:0 0 6px;font-size:21px;font-weight:650;letter-spacing:.2px}
header .meta{display:flex;flex-wrap:wrap;gap:6px 22px;color:#cbd5e1;font-size:13.5px}
header .meta b{color:#f8fafc;font-weight:600}
main{max-width:1280px;margin:0 auto;padding:20px 32px 48px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 20px;
 margin:0 0 20px;box-shadow:0 1px 2px rgba(15,23,42,.05)}
h2{font-size:16px;margin:0 0 10px;font-weight:650}
.muted{color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-weight:600;color:#374151;background:#f9fafb;font-size:13px}
td.num,th.num{text-align:right}
td.best{font-weight:700}
.swatch{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:7px;
 vertical-align:-1px}
.tabs{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 14px;border-bottom:1px solid var(--line)}
.tabs button{font:inherit;border:1px solid transparent;border-bottom:none;background:none;
 padding:7px 14px;border-radius:8px 8px 0 0;cursor:pointer;color:#374151;margin-bottom:-1px}
.tabs button[aria-selected=true]{background:#fff;border-color:var(--line);color:var(--fg);
 font-weight:650}
.tabs button:hover{background:#f3f4f6}
.js .panel[hidden]{display:none}
.panel h3{font-size:15px;margin:4px 0 8px}
.graphbox{overflow-x:auto;border:1px solid var(--line);border-radius:8px;background:#fff;
 padding:6px}
svg{display:block}
svg.circuit{max-width:none;height:auto;margin:0 auto}
svg.circuit text{font-size:12px;fill:#111827}
svg.circuit .rowlabel{fill:#6b7280;font-size:11.5px}
svg.circuit .collabel{fill:#374151;font-size:12px;font-weight:600}
svg.circuit .row{stroke:#f1f5f9;stroke-width:1}
svg.circuit .edge{fill:none;stroke-opacity:.72;stroke-linecap:round;transition:opacity .12s}
svg.circuit .edge:hover,svg.circuit .edge.hl{stroke-opacity:1}
svg.circuit.has-hl .edge:not(.hl){opacity:.12}
svg.circuit .node{cursor:default}
svg.circuit .node rect{stroke-width:1.3}
svg.circuit .port{fill:#fff;stroke:#d1d5db;stroke-width:1}
svg.circuit .port.used{fill:#fde68a;stroke:#d97706}
svg.circuit .portlabel{font-size:8px;fill:#374151;pointer-events:none}
.legendrow{display:flex;flex-wrap:wrap;gap:4px 18px;margin:8px 2px 12px;color:#4b5563;
 font-size:12.5px;align-items:center}
.legendrow i{display:inline-block;width:24px;height:0;border-top:3px solid;margin-right:6px;
 vertical-align:3px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px 24px}
.charts figure{margin:0}
.charts figcaption{font-weight:600;margin:0 0 4px;display:flex;justify-content:space-between;
 align-items:center}
.charts svg{width:100%;height:auto}
.chart text{font-size:12px;fill:#374151}
.chart .tick{font-size:11px;fill:#6b7280}
.chart .axis{font-size:12.5px;fill:#111827}
.chart .legend{font-size:12px;fill:#111827}
.chart .plot{fill:#fff}
.chart .frame{fill:none;stroke:#9ca3af}
.chart .grid{stroke:#eef0f3}
.chart .grid.minor{stroke:#f6f7f9}
.chart .ref{stroke:#9ca3af;stroke-dasharray:4 4}
.chart .series{fill:none;stroke-width:2.2;stroke-linejoin:round}
.js .chart.xlin{display:none}
.js.show-lin .chart.xlog{display:none}
.js.show-lin .chart.xlin{display:block}
.toggle{font:inherit;font-size:12px;font-weight:500;border:1px solid var(--line);background:#fff;
 border-radius:6px;padding:2px 8px;cursor:pointer;display:none}
.js .toggle{display:inline-block}
.scorebar{display:inline-block;height:8px;border-radius:2px;vertical-align:0;margin-right:6px}
td.edge{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
tr.edge-row:hover td{background:#f0f5ff}
.yes{color:#15803d;font-weight:700}
.note{font-size:12.5px;color:var(--muted);margin:6px 0 0}
table.kv{width:auto;margin:0 0 10px}
table.kv th{background:none;font-weight:500;color:var(--muted);padding:3px 14px 3px 0}
table.kv td{white-space:normal;word-break:break-word;padding:3px 0;font-family:ui-monospace,
 SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.settings-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:4px 24px}
.card h3{font-size:14px;margin:10px 0 4px}
dl.defs{margin:0;display:grid;grid-template-columns:max-content 1fr;gap:6px 16px}
dl.defs dt{font-weight:650}
dl.defs dd{margin:0}
table.overlap{width:auto}
table.overlap td{min-width:88px;text-align:center}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 24px}
"""

# Records errors into the page (the browser test reads them back), then wires up the
# algorithm tabs, the log/linear toggle and edge highlighting. No external resources.
JS_HEAD = """
(function(){var errs=[];function rec(m){errs.push(String(m));
document.documentElement.setAttribute('data-js-errors',errs.join(' | '));}
window.addEventListener('error',function(e){rec(e.message||'error');});
window.addEventListener('unhandledrejection',function(e){rec('unhandled rejection: '+e.reason);});
var ce=console.error;console.error=function(){rec(Array.prototype.join.call(arguments,' '));
if(ce)ce.apply(console,arguments);};})();
"""

JS_BODY = """
(function(){
var root=document.documentElement;root.classList.add('js');
var tabs=document.querySelectorAll('.tabs button');
function show(id){
  tabs.forEach(function(b){b.setAttribute('aria-selected',String(b.dataset.panel===id));});
  document.querySelectorAll('.panel').forEach(function(p){p.hidden=p.id!==id;});
}
tabs.forEach(function(b){b.addEventListener('click',function(){show(b.dataset.panel);
  var p=document.getElementById(b.dataset.panel);
  if(p&&history.replaceState)history.replaceState(null,'','#'+encodeURIComponent(p.dataset.algorithm));});});
var want=decodeURIComponent((location.hash||'').slice(1)),first=tabs.length?tabs[0].dataset.panel:null;
document.querySelectorAll('.panel').forEach(function(p){if(p.dataset.algorithm===want)first=p.id;});
if(first){show(first);}
document.querySelectorAll('.toggle').forEach(function(t){t.addEventListener('click',function(){
  var lin=root.classList.toggle('show-lin');
  document.querySelectorAll('.toggle').forEach(function(u){
    u.textContent=lin?'x: linear':'x: log';});});});
function hl(svg,ids,on){if(!svg)return;svg.classList.toggle('has-hl',on);
  ids.forEach(function(id){var e=document.getElementById(id);if(e)e.classList.toggle('hl',on);});}
document.querySelectorAll('svg.circuit .node').forEach(function(n){
  var ids=(n.getAttribute('data-edges')||'').split(' ').filter(Boolean);
  var svg=n.closest('svg');
  n.addEventListener('mouseenter',function(){hl(svg,ids,true);});
  n.addEventListener('mouseleave',function(){hl(svg,ids,false);});});
document.querySelectorAll('tr.edge-row').forEach(function(r){
  var id=r.getAttribute('data-edge');var e=document.getElementById(id);
  var svg=e?e.closest('svg'):null;
  r.addEventListener('mouseenter',function(){hl(svg,[id],true);});
  r.addEventListener('mouseleave',function(){hl(svg,[id],false);});});
var g=document.querySelector('.panel:not([hidden]) svg.circuit');
if(g){var b=g.getBoundingClientRect();root.setAttribute('data-graph-box',
  [b.left+window.scrollX,b.top+window.scrollY,b.width,b.height].map(Math.round).join(','));}
root.setAttribute('data-ready','1');
})();
"""
