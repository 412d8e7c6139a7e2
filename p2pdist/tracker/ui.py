"""The tracker's read-only fleet page (``GET /ui``): the same view as ``p2pdist status``,
refreshed live from ``/api/v1/status``. One static page, no external assets (clusters
are often offline)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>p2pdist tracker</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
 h1{font-size:1.3em;margin:0 0 .2em} .sub{color:#666;margin-bottom:1em}
 table{border-collapse:collapse;margin:.5em 0 1.5em;min-width:60%}
 th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right}
 th:first-child,td:first-child{text-align:left} th{background:#f4f4f4}
 .stale{color:#b00;font-weight:bold} .ok{color:#080}
 .bar{background:#eee;width:10em;height:.8em;display:inline-block;vertical-align:middle}
 .bar>span{background:#4a8;height:100%;display:block}
</style></head><body>
<h1>p2pdist tracker</h1><div class="sub" id="sub">loading…</div>
<h2>Peers</h2><table id="peers"><thead><tr><th>peer</th><th>address</th><th>zone</th>
<th>version</th><th>CPU %</th><th>RSS</th><th>disk</th><th>up/s</th><th>down/s</th>
<th>tasks</th><th>health</th></tr></thead><tbody></tbody></table>
<h2>Tasks</h2><table id="tasks"><thead><tr><th>task</th><th>size</th><th>published</th>
<th>state</th><th>peers</th><th>complete</th><th>from origin</th></tr></thead><tbody></tbody></table>
<script>
function size(n){if(n==null)return"?";const u=["B","KiB","MiB","GiB","TiB"];let i=0;
 while(n>=1024&&i<u.length-1){n/=1024;i++}return(i?n.toFixed(1):n)+" "+u[i]}
function cell(t){const td=document.createElement("td");td.textContent=t;return td}
function row(tbody,cells){const tr=document.createElement("tr");
 for(const c of cells){tr.appendChild(c instanceof Node?c:cell(c))}tbody.appendChild(tr)}
function progress(done,total){const s=document.createElement("td");
 const bar=document.createElement("span");bar.className="bar";const fill=document.createElement("span");
 fill.style.width=(total?Math.round(100*done/total):0)+"%";bar.appendChild(fill);s.appendChild(bar);
 s.appendChild(document.createTextNode(" "+done+"/"+(total??"?")));return s}
async function refresh(){
 try{const st=await (await fetch("api/v1/status",{cache:"no-store"})).json();
  document.getElementById("sub").textContent="version "+st.version+" · topology "+st.topology+
   " · "+st.peers.length+" peers · "+st.tasks.length+" tasks · updated "+new Date().toLocaleTimeString();
  const pb=document.querySelector("#peers tbody");pb.replaceChildren();
  for(const p of st.peers){const h=cell(p.stale?"stale":"ok");h.className=p.stale?"stale":"ok";
   row(pb,[p.peer_id,p.addr,p.zone||"-",p.version??"?",p.cpu_percent??"",size(p.rss_bytes),
    size(p.disk_used_bytes),size(p.upload_bps),size(p.download_bps),p.active_tasks??"",h])}
  const tb=document.querySelector("#tasks tbody");tb.replaceChildren();
  for(const t of st.tasks){row(tb,[t.task_id.slice(0,16),size(t.size),progress(t.chunks_published,t.chunks_total),
   t.error?"failed":t.sealed?"sealed":"seeding",t.peers,t.complete_peers,size(t.origin_bytes)])}
 }catch(e){document.getElementById("sub").textContent="tracker unreachable: "+e}}
refresh();setInterval(refresh,2000);
</script></body></html>
"""
