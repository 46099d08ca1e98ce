"""The Ray layer: the only sqz code that imports ray. Core functions do the work; this
package only launches them on a cluster (a local one started here, or ``ray://``)."""
