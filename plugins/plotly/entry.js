// The Plotly the pages load (plugins/plotly_asset.py serves it): plotly.js's core, which has the scatter trace and
// the layout components (shapes, annotations, sliders, colour bars, legends, date axes), and the three other
// trace types templates/pages/ draw. The full bundle's 4.8 MB took 1.7-2.0 s to parse and run in headless
// Chromium, this one about 0.4 s. A page that needs another trace type adds it here: `npm ci && npm run build`.
const Plotly = require("plotly.js/lib/core");

Plotly.register([require("plotly.js/lib/heatmap"), require("plotly.js/lib/bar"), require("plotly.js/lib/candlestick")]);
module.exports = Plotly;
