// The pages' behaviour: refresh what changes (the runs table, a run's curves and output), and send the forms as JSON.
const tunesmith = (() => {
  async function call(url, body) {
    const init = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
    const response = await fetch(url, init);
    const data = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    if (!response.ok) throw Object.assign(new Error(data.error || `HTTP ${response.status}`), {problems: data.problems || [data.error]});
    return data;
  }

  function every(ms, fn) {
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try { await fn(); } catch (error) { console.warn(error); } finally { busy = false; }
    };
    tick();
    return setInterval(tick, ms);
  }

  const runPath = name => name.split("/").map(encodeURIComponent).join("/");
  const show = (element, text) => { element.textContent = text; element.hidden = !text; };

  function runsPage() {
    const body = document.getElementById("runs-body"), button = document.getElementById("compare");
    const picked = new Set();
    const sync = () => {
      body.querySelectorAll("input.pick").forEach(box => { box.checked = picked.has(box.value); });
      button.disabled = picked.size < 2;
    };
    body.addEventListener("change", event => {
      if (!event.target.classList.contains("pick")) return;
      event.target.checked ? picked.add(event.target.value) : picked.delete(event.target.value);
      sync();
    });
    button.addEventListener("click", () => {
      location.href = "/compare?" + [...picked].map(name => "run=" + encodeURIComponent(name)).join("&");
    });
    setInterval(async () => {
      const response = await fetch("/fragments/runs").catch(() => null);
      if (response && response.ok) { body.innerHTML = await response.text(); sync(); }
    }, 2000);
  }

  const layout = (title, yTitle, log) => ({
    title: {text: title, font: {size: 14}}, margin: {l: 56, r: 12, t: 36, b: 40}, height: 300,
    xaxis: {title: {text: "step"}}, yaxis: {title: {text: yTitle}, type: log ? "log" : "linear"},
    legend: {orientation: "h", y: -0.25}, showlegend: true,
  });
  const config = {displaylogo: false, responsive: true};
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function runPage(info) {
    const series = {train_loss: [[], []], val_loss: [[], []], metric: [[], []], lr: [[], []]};
    const keys = {train_loss: "train_loss", val_loss: "val_loss", metric: info.metricKey, lr: "lr"};
    let offset = 0, state = info.state, findingsAt = Date.now();
    const stateBadge = document.getElementById("state"), steps = document.getElementById("steps");
    const log = document.getElementById("log"), stop = document.getElementById("stop"), resume = document.getElementById("resume");
    const problem = document.getElementById("action-problem");
    const line = (name, [x, y], markers) => ({x, y, name, mode: markers ? "lines+markers" : "lines", type: "scatter"});

    function draw() {
      Plotly.react("plot-loss", [line("training loss", series.train_loss), line("validation loss", series.val_loss, true)],
                   layout("loss", "loss"), config);
      Plotly.react("plot-metric", [line(info.headline, series.metric, true)], layout(info.headline, info.headline), config);
      Plotly.react("plot-lr", [line("learning rate", series.lr)], layout("learning rate", "lr"), config);
      document.getElementById("plot-loss").dataset.points = series.train_loss[0].length + series.val_loss[0].length;
      document.getElementById("plot-loss").dataset.lastStep = series.train_loss[0].at(-1) ?? series.val_loss[0].at(-1) ?? 0;
    }

    async function poll() {
      const data = await call(`/api/run/${runPath(info.name)}/metrics?offset=${offset}`);
      if (data.reset) Object.values(series).forEach(pair => { pair[0].length = 0; pair[1].length = 0; });
      for (const row of data.rows) {
        for (const [name, key] of Object.entries(keys)) {
          if (key in row) { series[name][0].push(row.step); series[name][1].push(row[key]); }
        }
      }
      if (data.rows.length || data.reset || offset === 0) draw();
      offset = data.offset;
      steps.textContent = data.steps;
      if (data.log && log.textContent !== data.log) {
        log.textContent = data.log;
        log.scrollTop = log.scrollHeight;
        document.getElementById("output").hidden = false;
      }
      if (data.state !== state) {
        const wasLive = ["running", "starting"].includes(state);
        state = data.state;
        stateBadge.textContent = state;
        stateBadge.className = `state ${state}`;
        if (wasLive && !["running", "starting"].includes(state)) location.reload();  // findings, samples, report, buttons
      }
      stop.hidden = !["running", "starting"].includes(state);
      if (state === "running" && Date.now() - findingsAt > 10000) {  // findings appear as evaluations come in
        findingsAt = Date.now();
        const response = await fetch(`/fragments/run/${runPath(info.name)}/findings`);
        if (response.ok) document.getElementById("findings").innerHTML = await response.text();
      }
    }

    const act = action => async () => {
      show(problem, "");
      try {
        await call(`/api/run/${runPath(info.name)}/${action}`, {});
        if (action === "resume") { state = "starting"; stateBadge.textContent = state; resume.hidden = true; }
        else stateBadge.textContent = "stopping";
      } catch (error) { show(problem, error.message); }
    };
    stop.addEventListener("click", act("stop"));
    resume.addEventListener("click", act("resume"));
    stop.disabled = resume.disabled = false;  // rendered disabled: a click before this point would do nothing
    every(1000, poll);
    tryIt(info.name);
  }

  function tryIt(name) {
    const section = document.getElementById("try");
    if (!section) return;
    const problem = document.getElementById("try-problem");
    const settings = () => ({temperature: Number(document.getElementById("try-temperature").value),
                             max_new_tokens: Number(document.getElementById("try-max-new-tokens").value)});
    const url = action => `/api/run/${runPath(name)}/${action}`;
    const wrap = (form, run) => form.addEventListener("submit", async event => {
      event.preventDefault();
      show(problem, "");
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try { await run(); } catch (error) { show(problem, error.message); } finally { button.disabled = false; }
    });
    const kind = section.dataset.kind;
    if (kind === "chat") {
      const history = [], logBox = document.getElementById("chat-log"), input = document.getElementById("chat-input");
      const say = (role, text) => {
        const bubble = document.createElement("div");
        bubble.className = `message ${role}`;
        bubble.textContent = text;
        logBox.appendChild(bubble);
        logBox.scrollTop = logBox.scrollHeight;
        return bubble;
      };
      wrap(document.getElementById("chat-form"), async () => {
        const text = input.value.trim();
        if (!text) return;
        const asked = say("user", text);
        input.value = "";
        let data;
        try { data = await call(url("chat"), {history, text, settings: settings()}); }
        catch (error) { asked.remove(); input.value = text; throw error; }  // the message waits to be sent again
        history.push({role: "user", content: text}, {role: "assistant", content: data.reply});
        say("assistant", data.reply || "(an empty reply)");
      });
      document.getElementById("chat-reset").addEventListener("click", () => { history.length = 0; logBox.textContent = ""; });
    } else if (kind === "classify") {
      wrap(document.getElementById("classify-form"), async () => {
        const data = await call(url("classify"), {text: document.getElementById("classify-input").value});
        document.getElementById("classify-result").textContent =
          `${data.label}  (` + data.probabilities.map(p => `${p.label} ${(100 * p.p).toFixed(1)}%`).join(", ") + ")";
      });
    } else if (kind === "score") {
      wrap(document.getElementById("score-form"), async () => {
        const data = await call(url("score"), {prompt: document.getElementById("score-prompt").value,
                                               answer: document.getElementById("score-answer").value});
        document.getElementById("score-result").textContent = `reward ${data.reward.toFixed(3)}`;
      });
    } else {
      wrap(document.getElementById("generate-form"), async () => {
        const prompt = document.getElementById("generate-input").value;
        const data = await call(url("generate"), {prompt, settings: settings()});
        let shown = prompt + data.text;
        if (data.rewards) {
          const each = Object.entries(data.rewards).map(([name, value]) => `${name} ${value.toFixed(3)}`).join(", ");
          shown += `\n\nrewards: ${each || "none scored here"}`;
          if (data.not_scored.length) shown += `\nnot scored here: ${data.not_scored.join(", ")}`;
        }
        show(document.getElementById("generate-output"), shown);
      });
    }
  }

  async function comparePage(info) {
    const query = info.names.map(name => "run=" + encodeURIComponent(name)).join("&");
    const metrics = await call(`/api/compare/metrics?${query}`);
    const loss = [], metric = [];
    info.names.forEach((name, i) => {
      const rows = metrics[name], key = info.metrics[i];
      const pick = field => { const kept = rows.filter(row => field in row); return [kept.map(row => row.step), kept.map(row => row[field])]; };
      const [vx, vy] = pick("val_loss"), [tx, ty] = pick("train_loss"), [mx, my] = pick(key);
      const color = COLORS[i % COLORS.length];  // one color a run, in both plots
      loss.push({x: vx, y: vy, name: `${name} validation`, mode: "lines+markers", type: "scatter", line: {color}});
      loss.push({x: tx, y: ty, name: `${name} training`, mode: "lines", line: {color, dash: "dot", width: 1}, type: "scatter"});
      metric.push({x: mx, y: my, name: `${name} ${info.labels[i]}`, mode: "lines+markers", type: "scatter", line: {color}});
    });
    Plotly.newPlot("plot-compare-loss", loss, layout("loss", "loss"), config);
    Plotly.newPlot("plot-compare-metric", metric, layout([...new Set(info.labels)].join(" / "), "value"), config);
    document.getElementById("plot-compare-loss").dataset.traces = loss.length;
  }

  function newPage() {
    const form = document.getElementById("new-run"), problems = document.getElementById("problems");
    const previewBox = document.getElementById("preview-out");
    const values = () => Object.fromEntries([...form.querySelectorAll("[name]")].map(field => [field.name, field.value]));
    const report = list => {
      problems.replaceChildren(...list.map(text => Object.assign(document.createElement("li"), {textContent: text})));
      problems.hidden = !list.length;
    };
    const send = (button, path, done) => async event => {
      event.preventDefault();
      report([]);
      button.disabled = true;
      try { done(await call(path, values())); } catch (error) { report(error.problems || [error.message]); }
      finally { button.disabled = false; }
    };
    const check = document.getElementById("check"), preview = document.getElementById("preview"), start = document.getElementById("start");
    const valid = document.getElementById("valid");
    form.addEventListener("input", () => { valid.hidden = true; });
    check.addEventListener("click", send(check, "/api/new/check", () => { valid.hidden = false; }));
    preview.addEventListener("click", send(preview, "/api/new/preview", data => {
      document.getElementById("preview-lines").textContent = data.lines.join("\n");
      document.getElementById("preview-examples").replaceChildren(...data.examples.map((text, i) => {
        const block = document.createElement("pre");
        block.className = "example";
        block.textContent = `example ${i + 1}\n${text}`;
        return block;
      }));
      previewBox.hidden = false;
    }));
    form.addEventListener("submit", send(start, "/api/new/start", data => { location.href = `/runs/${runPath(data.name)}`; }));
    check.disabled = preview.disabled = start.disabled = false;  // rendered disabled until their handlers are in place
  }

  return {runsPage, runPage, comparePage, newPage};
})();
