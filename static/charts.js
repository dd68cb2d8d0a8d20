// Draws the server-built Plotly figures (JSON in <script type="application/json">) with the page's
// light or dark colours, and redraws them when the colour scheme changes.
"use strict";

(function () {
  const PLOTLY_CONFIG = {
    responsive: true,
    displaylogo: false,
    modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"],
    toImageButtonOptions: { format: "png", scale: 2 },
  };

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // The layout's axes: "xaxis", "yaxis" and any stacked rows' "yaxis2", ….
  function axisKeys(layout) {
    return Object.keys(layout || {}).filter((key) => /^[xy]axis\d*$/.test(key));
  }

  // The theme-dependent part of a layout, from the CSS variables in static/app.css.
  function themeLayout(layout) {
    const fg = cssVar("--fg"), muted = cssVar("--muted"), grid = cssVar("--grid"), surface = cssVar("--surface");
    const axis = { gridcolor: grid, linecolor: grid, zerolinecolor: grid, tickcolor: grid, color: muted };
    const theme = {
      font: { color: fg },
      title: { font: { color: fg } },
      legend: { font: { color: fg } },
      hoverlabel: { bgcolor: surface, bordercolor: grid, font: { color: fg } },
      xaxis: axis,
      yaxis: axis,
    };
    axisKeys(layout).forEach((key) => { theme[key] = axis; });
    return theme;
  }

  // Deep-merge `extra` into `base` (plain objects only; arrays and values are replaced).
  function merge(base, extra) {
    const out = Object.assign({}, base);
    Object.keys(extra).forEach((key) => {
      const a = base[key], b = extra[key];
      out[key] = a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a) && !Array.isArray(b)
        ? merge(a, b) : b;
    });
    return out;
  }

  function themed(layout) {
    return merge(layout, themeLayout(layout));
  }

  const drawn = [];

  // Draw the figure whose JSON is in the element named by container.dataset.figure.
  function draw(container) {
    const figure = TB.readJsonBlock(container.dataset.figure);
    if (!figure || !window.Plotly) return null;
    const layout = themed(figure.layout || {});
    Plotly.newPlot(container, figure.data || [], layout, PLOTLY_CONFIG);
    drawn.push(container);
    return container;
  }

  // {a: {b: 1}} → {"a.b": 1}: relayout with a whole object would replace the axis, not update it.
  function flatten(obj, prefix, out) {
    Object.keys(obj).forEach((key) => {
      const path = prefix ? prefix + "." + key : key, value = obj[key];
      if (value && typeof value === "object" && !Array.isArray(value)) flatten(value, path, out);
      else out[path] = value;
    });
    return out;
  }

  function restyleAll() {
    drawn.forEach((gd) => {
      const theme = themeLayout(gd.layout);
      if (!gd.layout.xaxis || gd.data.some((t) => t.type === "parcoords")) { delete theme.xaxis; delete theme.yaxis; }
      Plotly.relayout(gd, flatten(theme, "", {}));
    });
  }

  if (window.matchMedia) {
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", restyleAll);
  }

  // Exponential moving average, as TensorBoard smooths: debiased, so the start is not pulled to 0.
  function ema(values, weight) {
    if (!weight) return values.slice();
    let last = 0, count = 0;
    return values.map((v) => {
      if (v === null || v === undefined || !isFinite(v)) return v;
      last = last * weight + (1 - weight) * v;
      count += 1;
      return last / (1 - Math.pow(weight, count));
    });
  }

  // Draw a figure fetched at run time: through a JSON block, like the server-rendered ones,
  // so that draw() applies the theme's colours and redraws it when the theme changes.
  function drawFigure(container, figure) {
    const block = document.createElement("script");
    block.type = "application/json";
    block.id = container.id + "-figure";
    block.textContent = JSON.stringify(figure);
    container.after(block);
    container.dataset.figure = block.id;
    draw(container);
  }

  window.TBCharts = { draw, drawFigure, ema, themeLayout, axisKeys, PLOTLY_CONFIG };
})();
