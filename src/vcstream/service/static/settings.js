// The per-call settings the server offers (its settings_schema), as sliders and lists.

import { current, state, ui } from "./page.js";

export function renderSettings(schema, values) {
  ui.settingsFields.replaceChildren();
  for (const [name, spec] of Object.entries(schema)) {
    const id = `setting-${name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    const shown = document.createElement("output");
    const describe = (value) => (spec.unit === "s" ? `${Math.round(value * 1000)} ms` : `${value}`);
    // the server offers a few values (its batches share shapes): a list; otherwise a slider
    const input = spec.choices ? document.createElement("select") : document.createElement("input");
    if (spec.choices) {
      for (const choice of spec.choices) input.append(new Option(describe(choice), choice));
      input.value = values[name] ?? spec.default;
    } else {
      Object.assign(input, { type: "range", min: spec.min, max: spec.max, step: spec.step, value: values[name] ?? spec.default });
    }
    input.id = id;
    input.dataset.setting = name;
    if (spec.help) input.title = spec.help; // what the setting trades off, from the engine's declaration
    const show = () => {
      shown.textContent = spec.choices ? "" : describe(input.value);
    };
    show();
    label.append(`${spec.label || name} `, shown);
    input.addEventListener("input", show);
    input.addEventListener("change", () => {
      const value = spec.type === "integer" ? parseInt(input.value, 10) : spec.type === "number" ? parseFloat(input.value) : input.value;
      state.settings = { ...state.settings, [name]: value };
      if (current.signalling.isReady()) current.signalling.send("settings", { settings: { [name]: value } });
    });
    ui.settingsFields.append(label, input);
  }
}
