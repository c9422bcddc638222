// Events, models and collections with the shape of WhatsApp Web's own (Backbone-style):
// `on`/`off`/`once`/`trigger`; a model property set by assignment fires `change:<name>` with
// (model, value, previous) and then `change` (model); a collection re-fires its models' events,
// fires `add`/`remove` with (model, collection, options), and looks models up by id.

class Events {
  on(names, fn, ctx) {
    if (typeof fn !== 'function') return this;
    this._events = this._events || {};
    for (const name of String(names).split(/\s+/).filter(Boolean)) {
      (this._events[name] = this._events[name] || []).push({ fn, ctx, once: false });
    }
    return this;
  }

  once(names, fn, ctx) {
    this.on(names, fn, ctx);
    for (const name of String(names).split(/\s+/).filter(Boolean)) {
      const list = this._events[name];
      list[list.length - 1].once = true;
    }
    return this;
  }

  off(names, fn) {
    if (!this._events) return this;
    const all = names == null ? Object.keys(this._events) : String(names).split(/\s+/).filter(Boolean);
    for (const name of all) {
      if (!this._events[name]) continue;
      this._events[name] = fn ? this._events[name].filter((h) => h.fn !== fn) : [];
    }
    return this;
  }

  trigger(name, ...args) {
    const run = (list, callArgs) => {
      for (const h of list.slice()) {
        if (h.once) this.off(name, h.fn);
        try {
          h.fn.apply(h.ctx || this, callArgs);
        } catch (e) {
          console.error('handler of ' + name + ' threw', e);
        }
      }
    };
    if (this._events && this._events[name]) run(this._events[name], args);
    if (this._events && this._events.all && name !== 'all') run(this._events.all, [name, ...args]);
    if (this._collections) {
      for (const c of Array.from(this._collections)) c._onModelEvent(name, args);
    }
    return this;
  }
}

// A model declares its fields; each becomes an own accessor so `model.x = v` behaves as
// `model.set('x', v)`, as on the real page.
class Model extends Events {
  constructor(attrs, fields) {
    super();
    Object.defineProperty(this, 'attributes', { value: {}, enumerable: false });
    Object.defineProperty(this, '_collections', { value: new Set(), enumerable: false });
    for (const f of fields || []) this._defineField(f);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (!(k in this)) this._defineField(k);
      this.attributes[k] = v;
    }
  }

  _defineField(name) {
    if (Object.prototype.hasOwnProperty.call(this, name)) return;
    Object.defineProperty(this, name, {
      get: () => this.attributes[name],
      set: (v) => this.set(name, v),
      enumerable: true,
      configurable: true,
    });
  }

  get(name) {
    return this.attributes[name];
  }

  set(name, value, options) {
    if (name && typeof name === 'object') {
      const changed = [];
      for (const [k, v] of Object.entries(name)) if (this._assign(k, v)) changed.push(k);
      for (const k of changed) this.trigger('change:' + k, this, this.attributes[k], this._prev[k]);
      if (changed.length && !(value && value.silent)) this.trigger('change', this);
      return this;
    }
    if (!this._assign(name, value)) return this;
    if (!(options && options.silent)) {
      this.trigger('change:' + name, this, value, this._prev[name]);
      this.trigger('change', this);
    }
    return this;
  }

  _assign(name, value) {
    if (!Object.prototype.hasOwnProperty.call(this, name)) this._defineField(name);
    if (this.attributes[name] === value) return false;
    if (!this._prev) Object.defineProperty(this, '_prev', { value: {}, enumerable: false });
    this._prev[name] = this.attributes[name];
    this.attributes[name] = value;
    return true;
  }

  serialize() {
    return Object.assign({}, this.attributes);
  }

  toJSON() {
    return this.serialize();
  }
}

function idKey(id) {
  if (id == null) return undefined;
  if (typeof id === 'string') return id;
  if (typeof id === 'object' && typeof id._serialized === 'string') return id._serialized;
  if (typeof id === 'object' && id.id != null && id.id !== id) return idKey(id.id);
  return String(id);
}

class Collection extends Events {
  constructor(modelClass, finder) {
    super();
    Object.defineProperty(this, 'modelClass', { value: modelClass, enumerable: false });
    Object.defineProperty(this, '_finder', { value: finder, enumerable: false, writable: true });
    this.models = [];
    this._index = new Map();
  }

  get length() {
    return this.models.length;
  }

  get(id) {
    if (id && id instanceof Model) return this._index.get(idKey(id.id)) === id ? id : undefined;
    return this._index.get(idKey(id));
  }

  has(id) {
    return this.get(id) !== undefined;
  }

  add(items, options) {
    const list = Array.isArray(items) ? items : [items];
    const added = [];
    for (const item of list) {
      const model = item instanceof Model ? item : new this.modelClass(item);
      const key = idKey(model.id);
      const existing = this._index.get(key);
      if (existing) {
        added.push(existing);
        continue;
      }
      this._index.set(key, model);
      this.models.push(model);
      model._collections.add(this);
      added.push(model);
      model.trigger('add', model, this, options || {});
    }
    return Array.isArray(items) ? added : added[0];
  }

  remove(items, options) {
    const list = Array.isArray(items) ? items : [items];
    for (const item of list) {
      const model = this.get(item instanceof Model ? item.id : item);
      if (!model) continue;
      this._index.delete(idKey(model.id));
      this.models.splice(this.models.indexOf(model), 1);
      model.trigger('remove', model, this, options || {});
      model._collections.delete(this);
    }
    return this;
  }

  reset() {
    for (const m of this.models) m._collections.delete(this);
    this.models = [];
    this._index.clear();
    this.trigger('reset', this);
  }

  // Backbone: a collection re-fires its models' events; `add`/`remove` only for itself.
  _onModelEvent(name, args) {
    if ((name === 'add' || name === 'remove') && args[1] !== this) return;
    Events.prototype.trigger.call(this, name, ...args);
  }

  getModelsArray() {
    return this.models.slice();
  }

  toArray() {
    return this.models.slice();
  }

  forEach(fn) {
    this.models.slice().forEach(fn);
  }

  map(fn) {
    return this.models.map(fn);
  }

  filter(fn) {
    return this.models.filter(fn);
  }

  findFirst(fn) {
    return this.models.find(fn);
  }

  at(i) {
    return this.models[i];
  }

  last() {
    return this.models[this.models.length - 1];
  }

  serialize() {
    return this.models.map((m) => m.serialize());
  }

  // WhatsApp's `find` resolves a model by id, fetching (here: creating) it when needed.
  async find(id) {
    const found = this.get(id);
    if (found) return found;
    if (this._finder) return this._finder(id);
    throw new Error('find: no ' + idKey(id) + ' in this collection');
  }
}
